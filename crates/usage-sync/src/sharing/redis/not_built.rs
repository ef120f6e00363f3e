//! Without the `redis` feature: the same calls, each failing with
//! [`RedisFailure::NotBuilt`]. `Engine::open` refuses a sharing
//! configuration in such a build, so these are never reached.

use std::time::Duration;

use super::{Admission, AdmitReply, LeaseReply, Redis, RedisFailure, RefundReply};

#[allow(clippy::unused_async)]
impl Redis {
    pub(crate) fn new(
        _urls: Vec<String>,
        _cluster: bool,
        _timeout: Duration,
        prefix: String,
    ) -> Self {
        Redis { prefix }
    }
    pub(crate) async fn connect(&self) -> Result<(), RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn ping(&self) -> Result<(), RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn admit(&self, _a: &Admission<'_>) -> Result<AdmitReply, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn lease(
        &self,
        _a: &Admission<'_>,
        _lease_size: u64,
    ) -> Result<LeaseReply, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn give_back(
        &self,
        _counter_key: &str,
        _units: u64,
    ) -> Result<(), RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn add_debt(
        &self,
        _counter_key: &str,
        _units: u64,
    ) -> Result<(), RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn counter(&self, _counter_key: &str) -> Result<Option<u64>, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn owner(&self, _request_id: &str) -> Result<Option<String>, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn refund(
        &self,
        _user: &str,
        _request_id: &str,
    ) -> Result<RefundReply, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn bump_user(&self, _user: &str) -> Result<u64, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn bump_plans(&self) -> Result<u64, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
    pub(crate) async fn plans_version(&self) -> Result<u64, RedisFailure> {
        Err(RedisFailure::NotBuilt)
    }
}
