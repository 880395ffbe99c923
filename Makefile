# sdunet build. `make` builds build/libsdunet.a, build/libsdunet.so and
# build/sdunet; `make test` builds and runs the whole suite.
CC      ?= cc
OPT     ?= -O2
CFLAGS  ?=
CSTD     = -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L
WARN     = -Wall -Wextra -Werror
SAN     ?=
BUILD   ?= build
PREFIX  ?= /usr/local
ALL_CFLAGS = $(CSTD) $(WARN) $(OPT) -g -fPIC -Iinclude -Isrc $(SAN) $(CFLAGS)
LDLIBS   = -lm -lpthread

ARCH := $(shell $(CC) -dumpmachine 2>/dev/null)
ifneq (,$(findstring x86_64,$(ARCH)))
  ISA_SRCS = $(wildcard src/*/*_avx2.c)
  ALL_CFLAGS += -DSD_HAVE_X86=1
else
  ISA_SRCS =
endif
PORTABLE_SRCS = $(filter-out %_avx2.c %_avx512.c,$(wildcard src/*/*.c))
LIB_OBJS = $(PORTABLE_SRCS:%.c=$(BUILD)/%.o) $(ISA_SRCS:%.c=$(BUILD)/%.o)
TOOL_SRCS = $(wildcard tools/*.c)
TEST_SRCS = $(wildcard tests/test_*.c)
TEST_BINS = $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT = $(filter-out $(TEST_SRCS),$(wildcard tests/*.c))

.PHONY: all lib test test-build asan ubsan install clean format bench
all: $(BUILD)/libsdunet.a $(BUILD)/libsdunet.so $(BUILD)/sdunet

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -mavx2 -mfma -mf16c -MMD -MP -c $< -o $@

$(BUILD)/libsdunet.a: $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/libsdunet.so: $(LIB_OBJS)
	$(CC) -shared $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/sdunet: $(TOOL_SRCS:%.c=$(BUILD)/%.o) $(BUILD)/libsdunet.a
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT:%.c=$(BUILD)/%.o) $(BUILD)/libsdunet.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $^ $(LDLIBS)

test-build: all $(TEST_BINS)

# The whole suite. TEST_FILTER=small skips the full-size SD1.5 cases.
test: test-build
	@BUILD=$(BUILD) sh tests/run.sh $(TEST_BINS)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test-build
	SDUNET_TEST_SMALL=1 BUILD=build-asan sh tests/run.sh $(TEST_SRCS:tests/%.c=build-asan/tests/%)

ubsan:
	$(MAKE) BUILD=build-ubsan OPT=-O1 SAN="-fsanitize=undefined -fno-sanitize-recover=all" test-build
	SDUNET_TEST_SMALL=1 BUILD=build-ubsan sh tests/run.sh $(TEST_SRCS:tests/%.c=build-ubsan/tests/%)

install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/*.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libsdunet.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libsdunet.so $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/sdunet $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|0.1.0|' sdunet.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/sdunet.pc

format:
	clang-format -i include/*.h src/*.h src/*/*.[ch] tools/*.c tests/*.[ch]

clean:
	rm -rf build build-asan build-ubsan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
