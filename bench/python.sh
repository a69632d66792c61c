# Sourced by the bench scripts that need FFmpeg and Python (the classic pipeline, the int8
# check): `bench_python PKG==VER…` installs what is missing (Debian's ffmpeg and python3-venv,
# then the pinned PyPI packages into .bench/venv) and sets $venv. For benchmarks only: the
# product needs neither.
bench_python() {
  local need=()
  command -v ffmpeg >/dev/null || need+=(ffmpeg)
  dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  venv=.bench/venv
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$@"
}
