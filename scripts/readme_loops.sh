#!/usr/bin/env bash
# The README's two loops (Versions, Review), in order, with short training and few examples: a check
# that the commands as written work together on the real default model (a few minutes on 2 CPU cores).
# The A/B votes and the correction a person would make in `tunesmith ui` are recorded through the same
# call its POST /api/judgements makes. Run it with .venv/bin on PATH, in a folder of its own (LOOP_OUT).
set -euxo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${LOOP_OUT:-/tmp/tunesmith-loops}
mkdir -p "$OUT" && cd "$OUT"
export TUNESMITH_REGISTRY="$OUT/registry.db"
E="$ROOT/examples/meeting-notes"
T="--data $E/test.jsonl --style $E/style.yaml --limit 6 --max-new-tokens 48"
S="--max-steps 4"
tunesmith train --data $E --out runs/v1 --epochs 1 $S --quiet
tunesmith eval --adapter runs/v1 $T --out eval/v1 --quiet > /dev/null
tunesmith runs promote v1
tunesmith train --data $E --out runs/v2 --from-adapter production --epochs 1 $S --quiet
tunesmith eval --adapter runs/v2 $T --out eval/v2 --gate production --quiet | tail -2 || true
tunesmith runs compare v1 v2 | head -12
tunesmith runs promote v2
V="--data $E/val.jsonl --limit 6 --max-new-tokens 48"
tunesmith eval --adapter v1 $V --out eval/v1-val --quiet > /dev/null
tunesmith eval --adapter v2 $V --out eval/v2-val --quiet > /dev/null
tunesmith review add v1 v2 --name round1
python - <<'PY'
import os
from tunesmith.registry.db import Registry
from tunesmith.review import store
from tunesmith.review.store import Judgement
reg = Registry(os.environ["TUNESMITH_REGISTRY"])
q = store.queue(reg, "round1")
for it in store.items(reg, "round1")[:4]:
    store.record(reg, Judgement(it["id"], "ann", "ab", q["a"], q["b"], q["b"]))
it = store.items(reg, "round1")[4]
store.record(reg, Judgement(it["id"], "ann", "correction", label=q["b"], text="Meeting Summary: fixed.\n\nPoints discussed:\n- one"))
PY
tunesmith review list
tunesmith review stats
tunesmith review export --sft fixes.jsonl --dpo pairs.jsonl --train $E
tunesmith data check fixes.jsonl pairs.jsonl
tunesmith train --method dpo --data pairs.jsonl --from-adapter v2 --out runs/v3-dpo $S --quiet || echo "dpo refused: exit $?"
tunesmith train --data fixes.jsonl --from-adapter v2 --replay $E --out runs/v3 $S --quiet
tunesmith eval --adapter runs/v3 $T --out eval/v3 --gate v2 --quiet | tail -2 || echo "gate exit $?"
tunesmith runs
