# Shared by the hello hooks: record what ran where, so tests and people can see it.
# HELLO_MARKS (env) is a directory outside the rootfs; default: next to the rootfs.
MARKS=${HELLO_MARKS:-$BERTH_ROOTFS/../marks}
mkdir -p "$MARKS"
mark() { echo "$1 $(date +%s)" >> "$MARKS/$BERTH_HOST.log"; }
# Fail a hook on purpose while the file $MARKS/fail-<hook>-<host> exists (for demos/tests).
maybe_fail() {
  if [ -e "$MARKS/fail-$1-$BERTH_HOST" ]; then
    echo "hello: failing $1 on $BERTH_HOST because $MARKS/fail-$1-$BERTH_HOST exists" >&2
    exit 1
  fi
}
