/* JSON parser: valid documents, every class of malformed input, limits. */
#include "check.h"
#include "io/json.h"

#include <string.h>

static sd_json *parse_ok(const char *text)
{
    sd_json *j = NULL;
    sdunet_error err = {0};
    sdunet_status st = sd_json_parse(text, strlen(text), &j, &err);
    CHECK(st == SDUNET_OK, "parse of %s failed: %s", text, err.message);
    return j;
}

/* Expects SDUNET_E_FORMAT with a message naming a byte offset. */
static void expect_bad_n(const char *text, size_t len, const char *label)
{
    sd_json *j = (sd_json *)0x1;
    sdunet_error err = {0};
    sdunet_status st = sd_json_parse(text, len, &j, &err);
    CHECK(st == SDUNET_E_FORMAT, "%s: status %d (%s)", label, (int)st, err.message);
    CHECK(err.code == SDUNET_E_FORMAT, "%s: err.code %d", label, (int)err.code);
    CHECK(j == NULL, "%s: out not cleared", label);
    CHECK(strstr(err.message, "byte") != NULL, "%s: message has no offset: %s", label, err.message);
    if (st == SDUNET_OK)
        sd_json_free(j);
}

static void expect_bad(const char *text)
{
    expect_bad_n(text, strlen(text), text);
}

static void test_scalars(void)
{
    sd_json *j = parse_ok("null");
    CHECK(j && j->type == SD_JSON_NULL, "null");
    sd_json_free(j);
    j = parse_ok(" true ");
    CHECK(j && j->type == SD_JSON_BOOL && j->boolean == 1, "true");
    sd_json_free(j);
    j = parse_ok("false");
    CHECK(j && j->type == SD_JSON_BOOL && j->boolean == 0, "false");
    sd_json_free(j);
    j = parse_ok("\"hi\"");
    CHECK(j && j->type == SD_JSON_STRING && strcmp(j->string, "hi") == 0 && j->len == 2, "str");
    sd_json_free(j);
    j = parse_ok("\"\"");
    CHECK(j && j->type == SD_JSON_STRING && j->len == 0 && j->string[0] == '\0', "empty str");
    sd_json_free(j);
}

static void test_numbers(void)
{
    static const struct {
        const char *text;
        double value;
        int is_int;
        int64_t integer;
    } cases[] = {
        {"0", 0, 1, 0},
        {"-0", -0.0, 1, 0},
        {"42", 42, 1, 42},
        {"-17", -17, 1, -17},
        {"9223372036854775807", 9223372036854775807.0, 1, INT64_MAX},
        {"-9223372036854775808", -9223372036854775808.0, 1, INT64_MIN},
        {"9223372036854775808", 9223372036854775808.0, 0, 0},
        {"1.5", 1.5, 0, 0},
        {"-0.25", -0.25, 0, 0},
        {"1e3", 1000, 0, 0},
        {"1E+3", 1000, 0, 0},
        {"2.5e-3", 0.0025, 0, 0},
        {"0.1", 0.1, 0, 0},
        {"123456789.123456789", 123456789.123456789, 0, 0},
        {"1.7976931348623157e308", 1.7976931348623157e308, 0, 0},
        {"4.9e-324", 4.9e-324, 0, 0},
        {"1e-400", 0.0, 0, 0}, /* underflow is a faithful reading, not an error */
        {"0.000000000000000000000000000001", 1e-30, 0, 0},
        {"100000000000000000000000000000000000000000000000000", 1e50, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sd_json *j = parse_ok(cases[i].text);
        if (!j)
            continue;
        CHECK(j->type == SD_JSON_NUMBER, "%s type", cases[i].text);
        CHECK(j->number == cases[i].value, "%s: %.17g != %.17g", cases[i].text, j->number,
              cases[i].value);
        CHECK(j->is_int == cases[i].is_int, "%s: is_int %d", cases[i].text, j->is_int);
        if (cases[i].is_int)
            CHECK(j->integer == cases[i].integer, "%s: integer %lld", cases[i].text,
                  (long long)j->integer);
        sd_json_free(j);
    }
    sd_json *j = parse_ok("-0");
    CHECK(j && signbit(j->number), "-0 keeps its sign");
    sd_json_free(j);
}

/* Random decimals of every length and exponent: the parser's fast and slow
 * paths must give exactly what strtod gives (the tests run in the C locale). */
static void test_numbers_random(void)
{
    uint64_t s = 0x9E3779B97F4A7C15ull;
    int bad = 0;
    for (int iter = 0; iter < 20000; iter++) {
        char text[96];
        size_t n = 0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t r = s;
        if (r & 1)
            text[n++] = '-';
        int int_digits = 1 + (int)((r >> 1) % 20);
        int frac_digits = (int)((r >> 6) % 25);
        int has_exp = (r >> 11) & 1;
        int exp = (int)((r >> 12) % 700) - 350;
        uint64_t d = r * 0x2545F4914F6CDD1Dull;
        for (int k = 0; k < int_digits; k++) {
            int digit = (int)(d % 10);
            d = d / 10 + (d % 7) * 0x1000000000000ull;
            if (k == 0 && int_digits > 1 && digit == 0)
                digit = 1 + (int)(r % 9);
            text[n++] = (char)('0' + digit);
        }
        if (frac_digits) {
            text[n++] = '.';
            for (int k = 0; k < frac_digits; k++) {
                text[n++] = (char)('0' + (int)(d % 10));
                d = d / 10 + (d % 7) * 0x1000000000000ull;
            }
        }
        if (has_exp)
            n += (size_t)snprintf(text + n, sizeof text - n, "e%d", exp);
        text[n] = '\0';
        double want = strtod(text, NULL);
        sd_json *j = NULL;
        sdunet_error err = {0};
        sdunet_status st = sd_json_parse(text, n, &j, &err);
        if (isinf(want)) {
            bad += st != SDUNET_E_FORMAT;
        } else if (st != SDUNET_OK || memcmp(&j->number, &want, sizeof want) != 0) {
            if (bad < 5)
                printf("  %s: got %.17g want %.17g (%s)\n", text, st ? 0.0 : j->number, want,
                       err.message);
            bad++;
        }
        sd_json_free(j);
    }
    CHECK(bad == 0, "%d mismatches against strtod", bad);
}

static void test_strings(void)
{
    sd_json *j = parse_ok("\"a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\"");
    CHECK(j && strcmp(j->string, "a\"b\\c/d\be\ff\ng\rh\ti") == 0, "simple escapes");
    sd_json_free(j);
    j = parse_ok("\"\\u0041\\u00e9\\u20AC\"");
    CHECK(j && strcmp(j->string, "A\xC3\xA9\xE2\x82\xAC") == 0, "BMP \\u escapes");
    CHECK(j && j->len == 6, "decoded length %zu", j ? j->len : 0);
    sd_json_free(j);
    j = parse_ok("\"\\ud83d\\ude00\"");
    CHECK(j && strcmp(j->string, "\xF0\x9F\x98\x80") == 0, "surrogate pair");
    sd_json_free(j);
    j = parse_ok("\"\\uDBFF\\uDFFF\"");
    CHECK(j && strcmp(j->string, "\xF4\x8F\xBF\xBF") == 0, "max code point");
    sd_json_free(j);
    /* Raw UTF-8 passes through unchanged. */
    j = parse_ok("\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"");
    CHECK(j && strcmp(j->string, "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80") == 0, "raw UTF-8");
    sd_json_free(j);
    j = parse_ok("\"\x7F\"");
    CHECK(j && j->len == 1, "DEL is allowed");
    sd_json_free(j);
}

static void test_containers(void)
{
    sd_json *j = parse_ok("{}");
    CHECK(j && j->type == SD_JSON_OBJECT && j->len == 0, "empty object");
    sd_json_free(j);
    j = parse_ok("[ ]");
    CHECK(j && j->type == SD_JSON_ARRAY && j->len == 0, "empty array");
    sd_json_free(j);

    const char *doc = " {\n \"name\": \"unet\", \"n\": [1, 2.5, [true, null, {}], {\"x\": []}],\r\n"
                      "\t\"obj\": {\"a\": {\"b\": {\"c\": -3}}}, \"empty\": \"\" } ";
    j = parse_ok(doc);
    if (!j)
        return;
    CHECK(j->type == SD_JSON_OBJECT && j->len == 4, "top-level object of 4");
    CHECK(strcmp(j->keys[0], "name") == 0 && strcmp(j->keys[3], "empty") == 0, "key order");
    const sd_json *name = sd_json_get(j, "name");
    CHECK(name && name->type == SD_JSON_STRING && strcmp(name->string, "unet") == 0, "name");
    const sd_json *n = sd_json_get(j, "n");
    CHECK(n && n->type == SD_JSON_ARRAY && n->len == 4, "n array");
    if (n && n->len == 4) {
        CHECK(n->items[0].is_int && n->items[0].integer == 1, "n[0]");
        CHECK(n->items[1].number == 2.5 && !n->items[1].is_int, "n[1]");
        const sd_json *inner = &n->items[2];
        CHECK(inner->type == SD_JSON_ARRAY && inner->len == 3, "n[2]");
        if (inner->len == 3) {
            CHECK(inner->items[0].type == SD_JSON_BOOL && inner->items[0].boolean, "n[2][0]");
            CHECK(inner->items[1].type == SD_JSON_NULL, "n[2][1]");
            CHECK(inner->items[2].type == SD_JSON_OBJECT && inner->items[2].len == 0, "n[2][2]");
        }
        const sd_json *x = sd_json_get(&n->items[3], "x");
        CHECK(x && x->type == SD_JSON_ARRAY && x->len == 0, "n[3].x");
    }
    const sd_json *c = sd_json_get(sd_json_get(sd_json_get(j, "obj"), "a"), "b");
    c = sd_json_get(c, "c");
    CHECK(c && c->is_int && c->integer == -3, "obj.a.b.c");
    CHECK(sd_json_get(j, "missing") == NULL, "missing key");
    CHECK(sd_json_get(n, "x") == NULL, "get on an array");
    CHECK(sd_json_get(NULL, "x") == NULL, "get on NULL");
    CHECK(sd_json_get(j, "emp") == NULL, "no prefix match");
    sd_json_free(j);
    sd_json_free(NULL);
}

static void test_many_keys(void)
{
    /* Large objects go through the sorting duplicate check. */
    size_t n = 5000;
    size_t cap = n * 24 + 16;
    char *buf = malloc(cap);
    size_t len = 0;
    buf[len++] = '{';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s\"k%zu\":%zu", i ? "," : "", i, i);
    buf[len++] = '}';
    sd_json *j = NULL;
    sdunet_error err = {0};
    CHECK(sd_json_parse(buf, len, &j, &err) == SDUNET_OK, "%s", err.message);
    CHECK(j && j->len == n, "count");
    const sd_json *v = sd_json_get(j, "k4321");
    CHECK(v && v->integer == 4321, "lookup");
    sd_json_free(j);
    /* Same with one duplicate at the end. */
    len--;
    len += (size_t)snprintf(buf + len, cap - len, ",\"k17\":0}");
    expect_bad_n(buf, len, "duplicate among 5000 keys");
    free(buf);
}

static void test_depth(void)
{
    char buf[2 * SD_JSON_MAX_DEPTH + 8];
    /* Exactly the limit parses. */
    size_t d = SD_JSON_MAX_DEPTH;
    for (size_t i = 0; i < d; i++) {
        buf[i] = '[';
        buf[2 * d - 1 - i] = ']';
    }
    sd_json *j = NULL;
    sdunet_error err = {0};
    CHECK(sd_json_parse(buf, 2 * d, &j, &err) == SDUNET_OK, "depth %zu: %s", d, err.message);
    sd_json_free(j);
    /* One more level fails. */
    d++;
    for (size_t i = 0; i < d; i++) {
        buf[i] = '[';
        buf[2 * d - 1 - i] = ']';
    }
    expect_bad_n(buf, 2 * d, "depth limit + 1");
    /* Deep objects too, and very deep input cannot exhaust the stack. */
    size_t big = 100000;
    char *deep = malloc(big);
    for (size_t i = 0; i < big; i++)
        deep[i] =
            (i % 5 == 0) ? '{' : (i % 5 == 1 ? '"' : (i % 5 == 2 ? 'a' : (i % 5 == 3 ? '"' : ':')));
    expect_bad_n(deep, big, "100000 bytes of nested objects");
    memset(deep, '[', big);
    expect_bad_n(deep, big, "100000 open brackets");
    free(deep);
}

static void test_malformed(void)
{
    static const char *bad[] = {
        "",
        "   ",
        "nul",
        "truex",
        "True",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "{'a':1}",
        "{\"a\":}",
        "[1 2]",
        "[",
        "{",
        "\"abc",
        "[1]]",
        "[1] x",
        "{} {}",
        "{\"a\":1}garbage",
        /* numbers */
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "0x10",
        "1.5e3.2",
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "[nan]",
        "1e309",
        "-1e309",
        "1e99999999999999999999",
        /* strings */
        "\"tab\there\"",
        "\"nl\nhere\"",
        "\"\\x41\"",
        "\"\\a\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\ud800x\"",
        "\"\\ud800\\u0041\"",
        "\"\\udc00\"",
        "\"\\udc00\\ud800\"",
        "\"\\ud83d\\ud83d\"",
        "\"\\",
        /* invalid UTF-8 */
        "\"\xC3\"",
        "\"\xC0\xAF\"",
        "\"\xE0\x80\xAF\"",
        "\"\xED\xA0\x80\"",
        "\"\xF4\x90\x80\x80\"",
        "\"\xFF\"",
        "\"\x80\"",
        /* duplicates */
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"b\":{\"c\":1,\"c\":1}}",
        /* a BOM is not JSON whitespace */
        "\xEF\xBB\xBF{}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_bad(bad[i]);
    /* Embedded NULs. */
    expect_bad_n("\"a\0b\"", 5, "NUL inside a string");
    expect_bad_n("[1]\0", 4, "NUL after the document");
    expect_bad_n("[\0]", 3, "NUL inside an array");
}

static void test_messages(void)
{
    sd_json *j = NULL;
    sdunet_error err = {0};
    sd_json_parse("[1, 2, 01]", 10, &j, &err);
    CHECK(strstr(err.message, "leading zero") && strstr(err.message, "byte 7"), "%s", err.message);
    sd_json_parse("{\"k\":1,\"k\":2}", 13, &j, &err);
    CHECK(strstr(err.message, "duplicate") && strstr(err.message, "\"k\""), "%s", err.message);
    CHECK(sd_json_parse(NULL, 3, &j, &err) == SDUNET_E_INVALID_ARG, "NULL text");
    CHECK(sd_json_parse("1", 1, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL out");
    /* err may be NULL. */
    CHECK(sd_json_parse("[", 1, &j, NULL) == SDUNET_E_FORMAT, "NULL err");
}

/* Python's NaN / Infinity / -Infinity (diffusers' configs) read as null;
 * the same words inside strings are kept. */
static void test_python_literals(void)
{
    const char *in = "{\"a\": -Infinity, \"b\": [NaN, Infinity, 1], \"c\": \"NaN \\\" Infinity\"}";
    size_t n;
    char *t = sd_json_from_python(in, strlen(in), &n);
    CHECK(t &&
              strcmp(t, "{\"a\": null, \"b\": [null, null, 1], \"c\": \"NaN \\\" Infinity\"}") == 0,
          "converted: %s", t ? t : "(null)");
    sd_json *j = NULL;
    sdunet_error err;
    CHECK(t && sd_json_parse(t, n, &j, &err) == SDUNET_OK, "parse");
    CHECK(j && sd_json_get(j, "a")->type == SD_JSON_NULL, "-Infinity is null");
    sd_json_free(j);
    free(t);
    CHECK(sd_json_parse(in, strlen(in), &j, &err) == SDUNET_E_FORMAT, "strict parser refuses");
}

/* The typed config getters: absent and null leave the value, a wrong type
 * or range is a config error naming the key. */
static void test_config_getters(void)
{
    sd_json *j = parse_ok("{\"i\": 7, \"big\": 70, \"f\": 0.5, \"s\": \"x\", \"b\": true, "
                          "\"n\": null, \"no\": false, \"fi\": 1.5}");
    if (!j)
        return;
    sdunet_error err = {0};
    int i = -1, b = -1;
    float f = -1;
    CHECK(sd_json_config_int(j, "i", 0, 10, "cfg", &i, &err) == SDUNET_OK && i == 7, "int %d", i);
    CHECK(sd_json_config_int(j, "n", 0, 10, "cfg", &i, &err) == SDUNET_OK && i == 7, "null int");
    CHECK(sd_json_config_int(j, "absent", 0, 10, "cfg", &i, &err) == SDUNET_OK && i == 7, "absent");
    CHECK(sd_json_config_int(j, "big", 0, 10, "cfg", &i, &err) == SDUNET_E_CONFIG && i == 7 &&
              strcmp(err.message, "cfg: 'big' must be an integer in 0..10") == 0,
          "range: %s", err.message);
    CHECK(sd_json_config_int(j, "fi", 0, 10, "cfg", &i, &err) == SDUNET_E_CONFIG, "fraction");
    CHECK(sd_json_config_int(j, "s", 0, 10, "cfg", &i, &err) == SDUNET_E_CONFIG, "string as int");
    CHECK(sd_json_config_bool(j, "b", "cfg", &b, &err) == SDUNET_OK && b == 1, "bool %d", b);
    CHECK(sd_json_config_bool(j, "i", "cfg", &b, &err) == SDUNET_E_CONFIG && b == 1 &&
              strcmp(err.message, "cfg: 'i' must be true or false") == 0,
          "int as bool: %s", err.message);
    CHECK(sd_json_config_float(j, "f", "cfg", &f, &err) == SDUNET_OK && f == 0.5f, "float %g", f);
    CHECK(sd_json_config_float(j, "i", "cfg", &f, &err) == SDUNET_OK && f == 7.0f, "int as float");
    CHECK(sd_json_config_float(j, "b", "cfg", &f, &err) == SDUNET_E_CONFIG && f == 7.0f &&
              strcmp(err.message, "cfg: 'b' must be a number") == 0,
          "bool as float: %s", err.message);
    CHECK(sd_json_null_or_false(sd_json_get(j, "n")) &&
              sd_json_null_or_false(sd_json_get(j, "no")) && sd_json_null_or_false(NULL) &&
              !sd_json_null_or_false(sd_json_get(j, "b")) &&
              !sd_json_null_or_false(sd_json_get(j, "i")),
          "null_or_false");
    sd_json_free(j);
}

int main(void)
{
    RUN(test_python_literals);
    RUN(test_scalars);
    RUN(test_numbers);
    RUN(test_numbers_random);
    RUN(test_strings);
    RUN(test_containers);
    RUN(test_many_keys);
    RUN(test_depth);
    RUN(test_malformed);
    RUN(test_messages);
    RUN(test_config_getters);
    return t_summary();
}
