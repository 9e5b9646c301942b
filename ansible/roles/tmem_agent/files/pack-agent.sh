#!/bin/sh
# pack-agent.sh SOURCE_DIR OUT: the agent package as a tar archive whose bytes depend only on
# the sources' contents (sorted, fixed times, owners and modes; no byte code), so an unchanged
# agent copies as unchanged.
set -eu
source=$1 out=$2
mkdir -p "$(dirname "$out")"
tar -cf "$out.tmp" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --mode=u=rwX,go=rX --exclude=__pycache__ --exclude='*.pyc' \
    -C "$(dirname "$source")" "$(basename "$source")"
mv "$out.tmp" "$out"
echo "$out"
