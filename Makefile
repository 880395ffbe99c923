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
  ISA_SRCS = $(wildcard src/*/*_avx2.c) $(wildcard src/*/*_avx512.c) $(wildcard src/*/*_amx.c)
  ALL_CFLAGS += -DSD_HAVE_X86=1
else
  ISA_SRCS =
endif
PORTABLE_SRCS = $(filter-out %_avx2.c %_avx512.c %_amx.c,$(wildcard src/*/*.c))
LIB_OBJS = $(PORTABLE_SRCS:%.c=$(BUILD)/%.o) $(ISA_SRCS:%.c=$(BUILD)/%.o)
TOOL_SRCS = $(wildcard tools/*.c)
TEST_SRCS = $(wildcard tests/test_*.c)
TEST_BINS = $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT = $(filter-out $(TEST_SRCS),$(wildcard tests/*.c))

# Keep intermediate objects (test support files) instead of deleting them after the link.
.SECONDARY:

.PHONY: all lib test test-build asan ubsan install clean format bench builds
all: $(BUILD)/libsdunet.a $(BUILD)/libsdunet.so $(BUILD)/sdunet $(BUILD)/examples/txt2img

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -mavx2 -mfma -mf16c -MMD -MP -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c -MMD -MP -c $< -o $@

$(BUILD)/%_amx.o: %_amx.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c -mamx-tile -mamx-bf16 -mavx512bf16 -MMD -MP -c $< -o $@

$(BUILD)/libsdunet.a: $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/libsdunet.so: $(LIB_OBJS)
	$(CC) -shared $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/sdunet: $(TOOL_SRCS:%.c=$(BUILD)/%.o) $(BUILD)/libsdunet.a
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

# make bench: the kernel benchmarks (bench/bench_gemm.c, bench/bench_weights.c) and the
# host probe run_peers.sh logs each round with (bench/host_probe.c); run on purpose.
BENCH_BINS = $(BUILD)/bench/bench_gemm $(BUILD)/bench/bench_weights $(BUILD)/bench/host_probe
bench: $(BENCH_BINS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libsdunet.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# The README's C example, built so that it keeps compiling.
$(BUILD)/examples/%: examples/%.c $(BUILD)/libsdunet.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT:%.c=$(BUILD)/%.o) $(BUILD)/libsdunet.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $^ $(LDLIBS)

test-build: all $(TEST_BINS)

# The whole suite. TEST_FILTER=small skips the full-size SD1.5 cases.
test: test-build
	@BUILD=$(BUILD) sh tests/run.sh $(TEST_BINS)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test-build
	SDUNET_TEST_SMALL=1 BUILD=build-asan SDUNET_BIN=build-asan/sdunet \
		sh tests/run.sh $(TEST_SRCS:tests/%.c=build-asan/tests/%)

ubsan:
	$(MAKE) BUILD=build-ubsan OPT=-O1 SAN="-fsanitize=undefined -fno-sanitize-recover=all" test-build
	SDUNET_TEST_SMALL=1 BUILD=build-ubsan SDUNET_BIN=build-ubsan/sdunet \
		sh tests/run.sh $(TEST_SRCS:tests/%.c=build-ubsan/tests/%)

# The build under other compilers and optimisation levels, -Werror each, and the small
# cases on the clang build (tests/builds.sh; part of .ci/run).
builds:
	sh tests/builds.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/*.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libsdunet.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libsdunet.so $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/sdunet $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|0.1.0|' sdunet.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/sdunet.pc

format:
	clang-format -i include/*.h src/*.h src/*/*.[ch] tools/*.[ch] tests/*.[ch] fuzz/*.[ch] bench/*.c

clean:
	rm -rf build build-asan build-ubsan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- Hardening (README "Hardening"): fuzzing, ThreadSanitizer, Valgrind --------------------
# make fuzz [FUZZ_SECONDS=60] [FUZZ_JOBS=1]: builds the libFuzzer harnesses in fuzz/ with clang
# (address + undefined), seeds their corpora from tests/data and runs each harness for
# FUZZ_SECONDS; any crash, leak, timeout, out-of-memory or broken invariant fails the target
# and leaves the input in $(FUZZ_BUILD)/artifacts/<harness>/ (keep it in
# fuzz/regressions/<harness>/ once fixed: `make test` replays that folder).
FUZZ_CC        ?= clang
FUZZ_BUILD     ?= build-fuzz
FUZZ_SECONDS   ?= 60
FUZZ_JOBS      ?= 1
FUZZ_HARNESSES  = safetensors json npy png ckpt pickle load tokenizer vocab vae vae_config
FUZZ_SAN        = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS     = $(CSTD) $(WARN) -O1 -g -Iinclude -Isrc $(FUZZ_SAN)

.PHONY: fuzz fuzz-build tsan valgrind

# The library is rebuilt by a sub-make with coverage instrumentation in its own folder.
fuzz-build:
	@mkdir -p $(FUZZ_BUILD)
	$(MAKE) CC=$(FUZZ_CC) BUILD=$(FUZZ_BUILD)/lib OPT=-O1 \
		SAN="$(FUZZ_SAN) -fsanitize=fuzzer-no-link \
		-fsanitize-coverage-ignorelist=fuzz/coverage-ignore.txt" $(FUZZ_BUILD)/lib/libsdunet.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c fuzz/targets.c \
		-o $(FUZZ_BUILD)/targets.o
	for h in $(FUZZ_HARNESSES); do \
		$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer fuzz/fuzz_$$h.c $(FUZZ_BUILD)/targets.o \
			$(FUZZ_BUILD)/lib/libsdunet.a $(LDLIBS) -o $(FUZZ_BUILD)/fuzz_$$h || exit 1; \
	done
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Itests -fsanitize=fuzzer-no-link fuzz/corpus.c tests/ckpt_build.c \
		tests/testutil.c $(FUZZ_BUILD)/targets.o $(FUZZ_BUILD)/lib/libsdunet.a $(LDLIBS) -o $(FUZZ_BUILD)/mkcorpus

fuzz: fuzz-build
	rm -rf $(FUZZ_BUILD)/seeds
	$(FUZZ_BUILD)/mkcorpus tests/data $(FUZZ_BUILD)/seeds
	sh fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_HARNESSES)

# make tsan: ThreadSanitizer on the programs that run models on several threads: the misuse
# tests (two threads on one model, the tiny case at 2 and 4 threads) and the golden small
# cases with SDUNET_THREADS=4.
TSAN_CC    ?= $(CC)
TSAN_BUILD ?= build-tsan
TSAN_TESTS  = test_misuse test_model test_pipeline

tsan:
	$(MAKE) CC=$(TSAN_CC) BUILD=$(TSAN_BUILD) OPT=-O1 SAN="-fsanitize=thread" \
		$(TSAN_TESTS:%=$(TSAN_BUILD)/tests/%)
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" SDUNET_TEST_SMALL=1 SDUNET_THREADS=4 \
		BUILD=$(TSAN_BUILD) sh tests/run.sh $(TSAN_TESTS:%=$(TSAN_BUILD)/tests/%)

# make valgrind: memcheck (leaks included) on the portable kernels: the tiny case through the
# CLI (npy in, synthetic weights, forward on 2 threads, npy out), the misuse and numerical
# hazard tests, and the fuzz regression inputs. Each runs through a wrapper script so
# tests/run.sh can count it.
VG_BUILD ?= build-valgrind
VALGRIND ?= valgrind -q --error-exitcode=1 --leak-check=full --track-origins=yes
VG_TESTS  = test_misuse test_fuzz_regressions
VG_TINY   = run --synthetic tests/data/tiny/config.json --sample tests/data/tiny/sample.npy \
	--timestep 981 --context tests/data/tiny/context.npy --out $(VG_BUILD)/tiny-eps.npy --threads 2

valgrind:
	$(MAKE) BUILD=$(VG_BUILD) OPT=-O1 $(VG_BUILD)/sdunet $(VG_TESTS:%=$(VG_BUILD)/tests/%)
	@mkdir -p $(VG_BUILD)/vg
	@for t in $(VG_TESTS); do \
		printf '#!/bin/sh\nexec %s %s\n' "$(VALGRIND)" "$(VG_BUILD)/tests/$$t" \
			>$(VG_BUILD)/vg/$$t; \
	done
	@printf '#!/bin/sh\n%s %s %s && echo "ok - sdunet run tiny"\n' "$(VALGRIND)" \
		"$(VG_BUILD)/sdunet" "$(VG_TINY)" >$(VG_BUILD)/vg/sdunet_run_tiny
	@chmod +x $(VG_BUILD)/vg/*
	SDUNET_ISA=portable BUILD=$(VG_BUILD) sh tests/run.sh $(VG_BUILD)/vg/sdunet_run_tiny \
		$(VG_TESTS:%=$(VG_BUILD)/vg/%)

.PHONY: clean-hardening
clean: clean-hardening
clean-hardening:
	rm -rf $(FUZZ_BUILD) $(TSAN_BUILD) $(VG_BUILD) build-builds
