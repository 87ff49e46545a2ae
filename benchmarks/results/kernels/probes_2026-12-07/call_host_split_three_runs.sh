# As run on the device (2026-12-07 01:17 UTC): the probe and the hostA tree (a git archive of 56e5c5b) travelled in
# the ignored .device_carry/ folder; $1 = 2c49b94 (main), $2 = 56e5c5b.
# host split probe at hostA (before the plain-Python cdiv) and at main (after), same machine, alternating twice;
# then main's bench_scan --compare (ours, and fla at m = 1; no authors' path) three times in three processes
# (issue 22's "within 10 % across three runs"). $1 = main's commit, $2 = hostA's. One tar out.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf .git
export PYTHONUNBUFFERED=1 BENCH_DIRTY=no
g=$(nvidia-smi --query-gpu=name --format=csv,noheader|head -1|grep -o 'H[0-9][0-9]*'|head -1|tr H h)
c=${1:0:7}; a=${2:0:7}; W=/tmp/res; mkdir -p $W; PR=$PWD/.device_carry/probes/probe_host_split.py
hs() {  # $1 tree, $2 commit
  (cd $1 && BENCH_COMMIT=$2 PYTHONPATH=/tmp/site:$PWD timeout -k 5 80 python $PR $W/probe_host_split_${g}_${2:0:7}.jsonl >> $W/host_split_${g}.log 2>&1; echo "${2:0:7} rc=$? t=$SECONDS" >> $W/host_split_${g}.log)
}
hs .device_carry/hostA $2; hs . $1; hs .device_carry/hostA $2; hs . $1
for r in 1 2 3; do
  BENCH_COMMIT=$1 PYTHONPATH=/tmp/site:$PWD timeout -k 5 150 python -m benchmarks.kernels.bench_scan --compare --out $W --name bench_scan_compare_${g}_${c}_run$r > $W/bench_scan_compare_${g}_${c}_run$r.log 2>&1; echo "rc=$? t=$SECONDS" >> $W/bench_scan_compare_${g}_${c}_run$r.log
done
tar -C $W -czf $OUT/results_${g}_${c}_host.tgz .
cat $W/host_split_${g}.log | cut -c1-150; grep -h -A18 "^median ms" $W/*.log
