#!/usr/bin/env bash
# Entrypoint of the motorsearch images: start a Ray node in the foreground, or run a command.
#
#   motorsearch-entrypoint head      Ray head node (GCS, dashboard, Ray client server)
#   motorsearch-entrypoint worker    Ray worker node joining $RAY_HEAD_ADDRESS
#   motorsearch-entrypoint CMD ...   anything else runs as given (e.g. python -m motorsearch run ...)
#
# Settings (environment; defaults match docker/compose.yaml and docker/k8s/*.yaml):
#   RAY_GCS_PORT=6379  RAY_DASHBOARD_PORT=8265  RAY_CLIENT_PORT=10001  RAY_AGENT_PORT=52365
#   RAY_HEAD_NUM_CPUS=0 (the head schedules no trials)   RAY_HEAD_ADDRESS=ray-head:6379 (workers)
#   RAY_NUM_CPUS / RAY_NUM_GPUS (workers; unset = detect)   RAY_TEMP_DIR (unset = /tmp/ray)
#   RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH naming a token file: the head
#     writes a new random token there if the file does not exist yet (so a shared volume carries
#     it to the workers); every node and every driver must use the same token.
set -euo pipefail

die() { echo "motorsearch-entrypoint: $*" >&2; exit 2; }

prepare_auth_token() {
    [[ "${RAY_AUTH_MODE:-}" == "token" ]] || return 0
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] && return 0
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] \
        || die "RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to be set."
    if [[ "$1" == "head" && ! -s "${RAY_AUTH_TOKEN_PATH}" ]]; then
        mkdir -p "$(dirname "${RAY_AUTH_TOKEN_PATH}")"
        (umask 077 && python -c "import secrets; print(secrets.token_hex(32), end='')" \
            > "${RAY_AUTH_TOKEN_PATH}.tmp.$$")
        mv "${RAY_AUTH_TOKEN_PATH}.tmp.$$" "${RAY_AUTH_TOKEN_PATH}"
        echo "motorsearch-entrypoint: wrote a new Ray auth token to ${RAY_AUTH_TOKEN_PATH}" >&2
    fi
    # Workers start after the head is healthy (compose depends_on), but wait a little anyway.
    for _ in $(seq 1 30); do
        [[ -s "${RAY_AUTH_TOKEN_PATH}" ]] && return 0
        sleep 1
    done
    die "RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH} is missing or empty; start the head first."
}

temp_dir_option=()
[[ -n "${RAY_TEMP_DIR:-}" ]] && temp_dir_option=(--temp-dir="${RAY_TEMP_DIR}")

role="${1:-head}"
case "${role}" in
    head)
        shift || true
        prepare_auth_token head
        exec ray start --head --block \
            --port="${RAY_GCS_PORT:-6379}" \
            --dashboard-host="${RAY_DASHBOARD_HOST:-0.0.0.0}" \
            --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
            --ray-client-server-port="${RAY_CLIENT_PORT:-10001}" \
            --dashboard-agent-listen-port="${RAY_AGENT_PORT:-52365}" \
            --num-cpus="${RAY_HEAD_NUM_CPUS:-0}" \
            --num-gpus=0 \
            --disable-usage-stats \
            "${temp_dir_option[@]}" "$@"
        ;;
    worker)
        shift || true
        prepare_auth_token worker
        resources=()
        [[ -n "${RAY_NUM_CPUS:-}" ]] && resources+=(--num-cpus="${RAY_NUM_CPUS}")
        [[ -n "${RAY_NUM_GPUS:-}" ]] && resources+=(--num-gpus="${RAY_NUM_GPUS}")
        exec ray start --block \
            --address="${RAY_HEAD_ADDRESS:-ray-head:6379}" \
            --dashboard-agent-listen-port="${RAY_AGENT_PORT:-52365}" \
            --disable-usage-stats \
            "${resources[@]}" "${temp_dir_option[@]}" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
