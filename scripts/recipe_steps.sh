# Shell helpers of the training recipes (sourced by reproduce_default_model.sh, reproduce_v7.sh and
# train_conditioned_model.sh; not run on its own).
#   complete DIR          : exit 0 when the TFRecord dataset DIR is complete (every shard written)
#   timed NAME COMMAND... : run COMMAND, then append its wall-clock minutes to $LOG

complete() {
  python -c "import sys; from tfdeblend.data import load_manifest; sys.exit(0 if load_manifest(sys.argv[1])['complete'] else 1)" "$1" 2>/dev/null
}
timed() {
  local name=$1 start
  shift
  start=$(date +%s)
  "$@"
  echo "$name $(( ($(date +%s) - start) / 60 )) min $(date -u +%FT%TZ)" >> "$LOG"
}
