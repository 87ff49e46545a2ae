# Issue 22, session 13: main's bench_scan --compare three times (the first with the authors' kernels at mad-lab 15f7b9f, auto_v2),
# then the model-level A/B (e239fad, the last commit before issue 22, against main). $1 = main's commit. One tar out.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf .git
export PYTHONUNBUFFERED=1 BENCH_DIRTY=no
g=$(nvidia-smi --query-gpu=name --format=csv,noheader|head -1|grep -o 'H[0-9][0-9]*'|head -1|tr H h)
c=${1:0:7}; W=/tmp/res; mkdir -p $W; L=$W/call13_${g}.log
echo "gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader|head -1) start=$(date -u +%FT%TZ)" > $L
cmp() {  # $1 run number, $2 extra args
  BENCH_COMMIT=$MAIN PYTHONPATH=/tmp/site:$PWD timeout -k 5 150 python -m benchmarks.kernels.bench_scan --compare $2 --out $W --name bench_scan_compare_${g}_${c}_run$1 > $W/bench_scan_compare_${g}_${c}_run$1.log 2>&1
  echo "compare run$1 rc=$? t=$SECONDS" >> $L
}
ab() {  # $1 tree, $2 commit
  (cd $1 && BENCH_COMMIT=$2 PYTHONPATH=/tmp/site:$PWD timeout -k 5 140 python -m benchmarks.model.bench --models hlru_m2,bdlru_k4 --sections train,prefill --train-modes compiled --train-grid 8192 --prefill-grid 16384,65536 --out $W/model_ab_${g}_${2:0:7} > $W/model_ab_${g}_${2:0:7}.log 2>&1; echo "model_ab ${2:0:7} rc=$? t=$SECONDS" >> $L)
}
MAIN=$1
pack() { tar -C $W -czf $OUT/results_${g}_${c}_call13.tgz .; }  # after every step: a run cut by its limit keeps what ran
cmp 1 "--authors-path $PWD/.device_carry/authors/mad_scans_new"; pack
cmp 2 ""; pack
cmp 3 ""; pack
ab .device_carry/base e239fade813b7b2bce920902482b60ae70a90ccd; pack
ab . $1; pack
cat $L; grep -h -A18 "^median ms" $W/bench*.log | cut -c1-160
