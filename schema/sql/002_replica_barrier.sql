-- A write a cluster node makes through its own ZooKeeper session before it
-- reads replication state (schema.Topology.CaughtUp): a session's write is
-- applied after every commit before it, so what the node reads next is not
-- older than that. One tiny table per node (its own ZooKeeper path on a
-- cluster, nothing to fetch for anyone); on one server it is never
-- written.
-- ORDER BY (k), k always 0: merges keep one row.
CREATE TABLE IF NOT EXISTS {{.DB}}.replica_barrier
(
    k UInt8,
    nonce UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (k)
