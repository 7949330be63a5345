#!/bin/sh
# Writes this pod's redis.conf and sentinel.conf into /etc/redis, an emptyDir:
# Sentinel rewrites its own file as it learns who is primary.
#
# Which node is the primary? After a failover it is no longer pod 0, so the
# sentinels of the other pods are asked first; only when none answers (the first
# start of the set) is pod 0 the primary. A primary that restarts after being
# replaced thereby comes back as a replica of its successor.
set -eu
NODES=statelab-redis-nodes
SELF="$(hostname).$NODES"
primary=""
for i in 0 1 2; do
  peer="statelab-redis-$i.$NODES"
  [ "$peer" = "$SELF" ] && continue
  primary=$(timeout 3 redis-cli -h "$peer" -p 26379 --raw \
    sentinel get-master-addr-by-name statelab 2>/dev/null | head -n 1) || primary=""
  [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="statelab-redis-0.$NODES"

cp /config/redis.conf /etc/redis/redis.conf
echo "replica-announce-ip $SELF" >> /etc/redis/redis.conf
if [ "$primary" != "$SELF" ]; then
  echo "replicaof $primary 6379" >> /etc/redis/redis.conf
fi

cp /config/sentinel.conf /etc/redis/sentinel.conf
cat >> /etc/redis/sentinel.conf <<CONF
sentinel announce-ip $SELF
sentinel monitor statelab $primary 6379 2
sentinel down-after-milliseconds statelab 5000
sentinel failover-timeout statelab 60000
sentinel parallel-syncs statelab 1
CONF
echo "configured $SELF (primary: $primary)"
