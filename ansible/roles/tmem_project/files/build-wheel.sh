#!/bin/sh
# build-wheel.sh PYTHON SOURCE OUTDIR: build the project's wheel on the controller, reproducibly.
# The tree is copied first (only what the wheel is built from), so the build leaves nothing in
# SOURCE; SOURCE_DATE_EPOCH fixes the timestamps inside the wheel, so the same sources give the
# same bytes and the copy to the hosts changes nothing. Prints the wheel's path.
set -eu
python=$1 source=$2 outdir=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$outdir"
cd "$source"
# shellcheck disable=SC2046
tar -cf - --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
    pyproject.toml README.md host-daemon guest-agent harness images \
    $(ls -d LICEN[CS]E* COPYING* 2>/dev/null) | tar -xf - -C "$work/src"
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --no-deps --no-build-isolation \
    --disable-pip-version-check -w "$work/dist" "$work/src" >&2
wheel=$(ls "$work"/dist/*.whl)
cp "$wheel" "$outdir/"
echo "$outdir/$(basename "$wheel")"
