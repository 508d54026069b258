#!/usr/bin/env bash
# The README's "Use your own models" walk, end to end, in a scratch folder (default: a temp
# dir): a JSONL data set -> collect -> judge -> train the head -> calibrate -> evaluate ->
# serve -> one request. Needs `make install` and `make zoo` first. On your own models, edit
# the my_config.yaml this writes (tiers' model, router.model) and run the same commands.
#   bash scripts/own_models_walk.sh [WORKDIR]
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
PY=$REPO/.venv/bin/python
export PATH=$REPO/.venv/bin:$PATH RAY_AUTH_MODE=disabled PYTHONPATH=$REPO
mkdir -p "$WORK" && cd "$WORK" || exit 1
echo "working in $WORK"
run() { echo "\$ $*"; "$@" 2>&1 | grep -v "Triton\| INFO \|WARNING\|Warning"; echo "[rc ${PIPESTATUS[0]}]"; echo; }
ZOO=$($PY -c "from models.zoo import zoo_dir; print(zoo_dir())")
rm -rf my_router && cp -r "$ZOO/router" my_router
$PY - "$REPO/serve_config.yaml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["http_options"] = {"host": "127.0.0.1", "port": 8000}
args = cfg["applications"][0]["args"]
args["router"]["model"] = "./my_router"
args["calibration"]["file"] = "./artifact.json"
yaml.safe_dump(cfg, open("my_config.yaml", "w"), sort_keys=False)
PY
run $PY -m models.tasks export --split calibration --seed 11 --n 1500 --out items.jsonl
run $PY -m calibration collect --config my_config.yaml --data items.jsonl --out traces/ --no-progress
run $PY -m calibration judge --traces traces/ --judge exact --no-progress
run $PY -m calibration train --config my_config.yaml --traces traces/ --quiet --install --reward log
run $PY -m calibration calibrate --config my_config.yaml --traces traces/ --mode risk --alpha 0.05 --out artifact.json --json
run $PY -m calibration evaluate --config my_config.yaml --traces traces/
echo '$ serve run my_config.yaml   (in the background)'
serve run my_config.yaml > serve.log 2>&1 &
SERVE=$!
for i in $(seq 1 150); do
  curl -sf -o /dev/null http://127.0.0.1:8000/readyz && break
  sleep 2
done
run curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model": "cascade", "messages": [{"role": "user", "content": "48+7"}]}'
kill -INT $SERVE; sleep 10; kill -9 $SERVE 2>/dev/null; ray stop --force >/dev/null 2>&1
