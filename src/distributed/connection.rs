//! The Redis a fleet talks to: one server (a primary, or whatever a managed service puts
//! behind one address), or a Redis Cluster (feature `redis-cluster`).
//!
//! Every key a fleet's token touches carries one hash tag, so on a cluster each command,
//! pipeline and script goes to the one node that owns the slot.

use redis::{Cmd, Pipeline, RedisFuture, Value, aio::ConnectionLike};

/// A connection to the fleet's Redis; cheap to clone (each is a handle on one multiplexed
/// connection, or on the cluster's).
#[derive(Clone)]
pub(crate) enum RedisConnection {
    /// One server, through a connection manager (it reconnects by itself).
    Server(redis::aio::ConnectionManager),
    /// A Redis Cluster: commands go to the node owning their slot.
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Server(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Server(connection) => {
                connection.req_packed_commands(cmd, offset, count)
            }
            #[cfg(feature = "redis-cluster")]
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(cmd, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Server(connection) => connection.get_db(),
            #[cfg(feature = "redis-cluster")]
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}
