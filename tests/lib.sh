# lib.sh: shared by the tests/script_*.sh trials: pass/fail counting and the Fashion-MNIST
# sample dataset they train on. Source it after setting `build`.
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
# the closing "N passed, N failed" line and the exit status
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
# OUT.h5: the 500 Fashion-MNIST test images of tests/fixtures, through d2v-prep-image
prep_fmnist() {
    "$build/bin/d2v-prep-image" --idx-images tests/fixtures/fmnist-t500-images-idx3.gz \
        --idx-labels tests/fixtures/fmnist-t500-labels-idx1.gz -o "$1" >/dev/null
}
