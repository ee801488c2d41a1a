#!/bin/bash
exec valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file=/tmp/cg2/$CGTAG.receiver.%p ${VGBIN:-/work/main/target/release/examples}/receiver "$@"
