#!/bin/sh
# Entrypoint of the afunet-service images.
#
#   docker run IMAGE                    the image's CMD: `hdr-service api` or `hdr-service worker`
#   docker run IMAGE worker --check     any hdr-service sub-command, with its options
#   docker run IMAGE --help             options go to hdr-service too
#   docker run IMAGE sh                 anything else runs as given (debugging)
#
# `exec` makes hdr-service PID 1, so the orchestrator's SIGTERM reaches it directly: the
# API stops gracefully, a worker drains (HDR_DRAIN_SECONDS).
set -eu

case "${1:-}" in
    # The sub-commands of service/cli.py (tests/deploy checks that the lists agree).
    api | worker | serve | infer | export | evaluate | synth | submit)
        exec hdr-service "$@"
        ;;
    -*)
        exec hdr-service "$@"
        ;;
    "")
        echo "hdr-entrypoint: no command; try: api, worker, worker --check, --help" >&2
        exit 2
        ;;
    *)
        exec "$@"
        ;;
esac
