#!/usr/bin/env bash
# v52 probe: the host's CPU idle set-up, and wake-ups with and without a held PM QoS request of 0 us.
set -u
export PYTHONPATH=src
{
  id -u; uname -r; nproc
  for f in /sys/devices/system/cpu/cpuidle/current_driver /sys/devices/system/cpu/cpuidle/current_governor_ro \
           /sys/devices/system/cpu/cpuidle/current_governor /sys/module/haltpoll/parameters/* \
           /sys/module/cpuidle_haltpoll/parameters/* /sys/module/kvm/parameters/halt_poll_ns; do
    [ -e "$f" ] && echo "$f: $(cat $f)"
  done
  for s in /sys/devices/system/cpu/cpu0/cpuidle/state*; do
    [ -d "$s" ] && echo "$s: $(cat $s/name) latency=$(cat $s/latency) usage=$(cat $s/usage) disable=$(cat $s/disable)"
  done
  ls -l /dev/cpu_dma_latency; cat /proc/cmdline; grep -m1 "model name" /proc/cpuinfo
} > $OUT/host.txt 2>&1
cat $OUT/host.txt
hold() { python3 -c "
import os, struct, time
fd = os.open('/dev/cpu_dma_latency', os.O_WRONLY); os.write(fd, struct.pack('i', 0)); print('held', flush=True); time.sleep(600)" & }
for r in 1 2; do
  timeout 100 python3 scripts/wake_probe.py > $OUT/wake_plain$r.json 2>&1; echo "plain $r"; cat $OUT/wake_plain$r.json
  hold; pid=$!; sleep 1
  timeout 100 python3 scripts/wake_probe.py > $OUT/wake_qos$r.json 2>&1; echo "qos $r"; cat $OUT/wake_qos$r.json
  kill $pid
done
