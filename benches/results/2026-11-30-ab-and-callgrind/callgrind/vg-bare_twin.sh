#!/bin/bash
exec valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file=/tmp/cg/$CGTAG.bare_twin.%p /work/main/target/release/examples/bare_twin "$@"
