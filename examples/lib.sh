# Shared helpers of the example recipes (sourced by examples/*/run.sh; uses $OUT and $PY).

tiny_models() {  # build tiny random models once (no downloads); real ones come from the env vars
  if [ ! -d "$OUT/models/vae" ]; then "$PY" -m mmprep_encoders.tiny "$OUT/models" >/dev/null; fi
  echo "encoders use tiny random models under $OUT/models (set the model env vars for real ones)"
}

run_encode_yaml() {  # $1 encode.yaml, $2 out dir: run it only when an encoder is installed and it validates
  local have
  have=$(mmprep components encoder 2>/dev/null | awk '$1=="encoder"{print $2}' | tr '\n' ' ')
  if [ -z "$have" ]; then echo "encode.yaml skipped: no encoder installed (mmprep components encoder)"; return 0; fi
  if ! mmprep run "$1" --out "$2" --dry-run >"$2.dry-run.log" 2>&1; then
    echo "encode.yaml skipped (installed encoders: $have): $(tail -n 3 "$2.dry-run.log")"
    return 0
  fi
  mmprep run "$1" --out "$2" --quiet
  mmprep verify "$2"
}
