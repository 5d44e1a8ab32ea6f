//! The `redis://` token store: the live-token index, the revocation list and the mint counters
//! in one Redis server that every replica shares, so a revocation on one replica holds on all
//! and the mint limit counts across them (issue 13 item 4).
//!
//! Key layout, every key under the fixed prefix `quay-authz:` and every key expiring with
//! what it describes, so nothing outlives it (no sweeper is needed; Redis drops them):
//!
//! | key | value | expires |
//! | --- | --- | --- |
//! | `quay-authz:token:{jti}` | the `IssuedToken` as JSON (never the token itself) | at the token's `exp` |
//! | `quay-authz:tokens` | sorted set of live `jti`s, scored by `exp`; entries at or past `now` are pruned on every write | at the latest `exp` it holds |
//! | `quay-authz:revoked:{jti}` | `1` | when the revoked token would have expired (its entry's remaining TTL, moved over) |
//! | `quay-authz:revoked-principal:{principal}` | Unix second of the revocation: tokens of that `sub` issued at or before it are revoked | after `max_lifetime_seconds` (no older token can still be valid) |
//! | `quay-authz:mints:{principal}:{window}` | mints in that minute (`INCR`) | at the end of the minute |
//!
//! TTLs are relative (`EX`/`PX` computed from the caller's `now`), so a Redis clock that
//! differs from ours moves nothing. Every write that touches more than one key is one Lua
//! script or one `MULTI`, so it is atomic against the other replicas: the same `jti` revoked
//! twice at once is returned once, and a record racing a revoke leaves one or the other. The
//! scripts name keys they compute (`token:{jti}` from the index), so the store needs a single
//! Redis (with its replicas), not Redis Cluster.
//!
//! Failure: every operation is bounded by `OPERATION_TIMEOUT` (under Envoy's recommended 0.5 s
//! ext_authz timeout), and any failure is a `StoreError` (`revocation_unavailable`): a Check
//! never hangs on Redis. The connection is a `redis` `ConnectionManager`, created lazily and
//! dropped after a failure, so the next operation connects afresh and the store recovers by
//! itself when Redis is back. Redis going away and coming back is logged once each (no flood),
//! and `health()` keeps the last outcome for `/readyz` and the `quay_authz_token_store_up`
//! gauge. Error texts name what failed, never the URL or the password.
//!
//! Redis should persist (RDB or AOF) or be replicated, and keep its default `maxmemory-policy
//! noeviction`: a Redis that restarts empty, or evicts keys under memory pressure, forgets
//! revocations, and revoked tokens would be accepted again until they expire.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{IssuedToken, MINT_WINDOW_SECONDS, StoreError, StoreHealth, mint_window};
use crate::config::bridge::RedisLocation;

/// Every key starts with this.
pub const PREFIX: &str = "quay-authz:";

/// The most one operation may take, connecting included; under Envoy's ext_authz timeout
/// (0.5 s in README "Envoy"), so a slow Redis is a `revocation_unavailable` from us, not a
/// timeout at Envoy.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(250);

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Adds the token to the index. KEYS: token:{jti}, tokens. ARGV: JSON, TTL seconds, exp, jti, now.
const RECORD: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
";

/// Moves one live entry to the revocation list, keeping its expiry. KEYS: token:{jti},
/// revoked:{jti}, tokens. ARGV: jti, now. Returns the entry, or nil when none is live.
const REVOKE: &str = r"
local token = redis.call('GET', KEYS[1])
if not token then return false end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ttl < 0 then ttl = expiry_from_entry(token, ARGV[2]) end
if ttl > 0 then redis.call('SET', KEYS[2], '1', 'PX', ttl) end
return token
";

/// The milliseconds left to an entry's `expires_at`, for an entry whose key lost its TTL
/// (a `PERSIST` by hand): the revocation mark must still be written, and still expire.
const EXPIRY_FROM_ENTRY: &str = r"
local function expiry_from_entry(token, now)
  local ok, entry = pcall(cjson.decode, token)
  if ok and tonumber(entry.expires_at) then
    return (tonumber(entry.expires_at) - tonumber(now)) * 1000
  end
  return 0
end
";

/// Marks the principal revoked and moves its live entries issued at or before `now` to the
/// revocation list. KEYS: revoked-principal:{principal}, tokens. ARGV: principal, now,
/// max lifetime, prefix. Returns the entries revoked.
const REVOKE_PRINCIPAL: &str = r"
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
local now = tonumber(ARGV[2])
local revoked = {}
for _, jti in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[2], '+inf')) do
  local key = ARGV[4] .. 'token:' .. jti
  local token = redis.call('GET', key)
  if token then
    local ok, entry = pcall(cjson.decode, token)
    if ok and entry.principal == ARGV[1] and tonumber(entry.issued_at) <= now then
      local ttl = redis.call('PTTL', key)
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[2], jti)
      if ttl < 0 then ttl = expiry_from_entry(token, ARGV[2]) end
      if ttl > 0 then redis.call('SET', ARGV[4] .. 'revoked:' .. jti, '1', 'PX', ttl) end
      table.insert(revoked, token)
    end
  end
end
return revoked
";

/// The live entries, in one consistent read. KEYS: tokens. ARGV: now, prefix.
const LIST: &str = r"
local found = {}
for _, jti in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local token = redis.call('GET', ARGV[2] .. 'token:' .. jti)
  if token then table.insert(found, token) end
end
return found
";

pub struct RedisStore {
    client: redis::Client,
    /// `describe()` of the location: what logs may name.
    shown: String,
    /// The shared connection; `None` until first use and after a failure.
    manager: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    /// UNKNOWN, UP or DOWN: the last operation's outcome, for `health` and the log-once rule.
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
    record: redis::Script,
    revoke: redis::Script,
    revoke_principal: redis::Script,
    list: redis::Script,
}

impl RedisStore {
    /// Connects lazily: nothing happens on the network until the first operation.
    pub fn new(location: &RedisLocation) -> Result<Self, StoreError> {
        Self::with_timeout(location, OPERATION_TIMEOUT)
    }

    pub fn with_timeout(location: &RedisLocation, timeout: Duration) -> Result<Self, StoreError> {
        // Validated at load with the same parser, so this fails only if the configuration
        // was built some other way.
        let client = redis::Client::open(location.url())
            .map_err(|error| StoreError::new(describe_error(&error)))?;
        Ok(Self {
            client,
            shown: location.describe().to_string(),
            manager: Mutex::new(None),
            timeout,
            state: AtomicU8::new(UNKNOWN),
            last_error: Mutex::new(None),
            record: redis::Script::new(RECORD),
            revoke: redis::Script::new(&format!("{EXPIRY_FROM_ENTRY}{REVOKE}")),
            revoke_principal: redis::Script::new(&format!("{EXPIRY_FROM_ENTRY}{REVOKE_PRINCIPAL}")),
            list: redis::Script::new(LIST),
        })
    }

    /// `redis://host:6379/0`, never the password.
    pub fn location(&self) -> &str {
        &self.shown
    }

    pub fn health(&self) -> StoreHealth {
        match self.state.load(Ordering::Relaxed) {
            UP => StoreHealth::Up,
            DOWN => StoreHealth::Down(
                self.last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_default(),
            ),
            _ => StoreHealth::Unknown,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", true, |mut connection| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
        })
        .await
    }

    pub async fn record(&self, token: &IssuedToken, now: u64) -> Result<(), StoreError> {
        if token.expires_at <= now {
            // Already expired: there is nothing to list or revoke.
            return Ok(());
        }
        let json =
            serde_json::to_string(token).map_err(|_| StoreError::new("cannot encode the entry"))?;
        let ttl = token.expires_at - now;
        // Tried again on a fresh connection after a dropped one (Redis restarted while idle):
        // the script sets the same entry, score and expiries, so applying it twice is
        // harmless, and the first exchange after a restart is not refused for nothing.
        self.script(
            "record",
            true,
            &self.record,
            &[key(&["token", &token.jti]), key(&["tokens"])],
            &[
                json,
                ttl.to_string(),
                token.expires_at.to_string(),
                token.jti.clone(),
                now.to_string(),
            ],
        )
        .await
        .map(|_: i64| ())
    }

    pub async fn list(&self, now: u64) -> Result<Vec<IssuedToken>, StoreError> {
        let entries: Vec<String> = self
            .script(
                "list",
                true,
                &self.list,
                &[key(&["tokens"])],
                &[now.to_string(), PREFIX.to_string()],
            )
            .await?;
        let mut tokens = decode_all(&entries);
        tokens.retain(|token| token.expires_at > now);
        tokens.sort_by(|a, b| (a.issued_at, &a.jti).cmp(&(b.issued_at, &b.jti)));
        Ok(tokens)
    }

    pub async fn live_count(&self, now: u64) -> Result<u64, StoreError> {
        self.run("live_count", true, |mut connection| async move {
            redis::cmd("ZCOUNT")
                .arg(key(&["tokens"]))
                .arg(format!("({now}"))
                .arg("+inf")
                .query_async(&mut connection)
                .await
        })
        .await
    }

    pub async fn revoke(&self, jti: &str, now: u64) -> Result<Option<IssuedToken>, StoreError> {
        let entry: Option<String> = self
            .script(
                "revoke",
                false,
                &self.revoke,
                &[
                    key(&["token", jti]),
                    key(&["revoked", jti]),
                    key(&["tokens"]),
                ],
                &[jti.to_string(), now.to_string()],
            )
            .await?;
        match entry {
            None => Ok(None),
            // Revoked either way; an entry we cannot read is still reported, so the operator
            // is not told the jti was unknown.
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| StoreError::new("revoked, but its entry is unreadable")),
        }
    }

    pub async fn revoke_principal(
        &self,
        principal: &str,
        now: u64,
        max_lifetime_seconds: u64,
    ) -> Result<Vec<IssuedToken>, StoreError> {
        let entries: Vec<String> = self
            .script(
                "revoke_principal",
                false,
                &self.revoke_principal,
                &[key(&["revoked-principal", principal]), key(&["tokens"])],
                &[
                    principal.to_string(),
                    now.to_string(),
                    max_lifetime_seconds.max(1).to_string(),
                    PREFIX.to_string(),
                ],
            )
            .await?;
        let mut revoked = decode_all(&entries);
        revoked.sort_by(|a, b| (a.issued_at, &a.jti).cmp(&(b.issued_at, &b.jti)));
        Ok(revoked)
    }

    /// One round trip: the `jti`'s mark and the principal's, pipelined.
    pub async fn is_revoked(
        &self,
        jti: &str,
        principal: &str,
        issued_at: u64,
        _now: u64,
    ) -> Result<bool, StoreError> {
        let (jti_revoked, principal_revoked_at): (bool, Option<u64>) = self
            .run("is_revoked", true, |mut connection| async move {
                redis::pipe()
                    .exists(key(&["revoked", jti]))
                    .get(key(&["revoked-principal", principal]))
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(jti_revoked || principal_revoked_at.is_some_and(|at| issued_at <= at))
    }

    pub async fn count_mint(&self, principal: &str, now: u64) -> Result<u64, StoreError> {
        let window = mint_window(now);
        let counter = key(&["mints", principal, &window.to_string()]);
        // Until the end of the minute it counts; at least a second so EXPIRE never deletes.
        let ttl = (window + MINT_WINDOW_SECONDS).saturating_sub(now).max(1);
        // Tried again after a dropped connection: if the first INCR was applied and only its
        // answer lost, the principal is counted once too often — the safe direction for a
        // limit — instead of the exchange being refused.
        let (count,): (u64,) = self
            .run("count_mint", true, |mut connection| {
                let counter = counter.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .incr(&counter, 1)
                        .expire(&counter, ttl as i64)
                        .ignore()
                        .query_async(&mut connection)
                        .await
                }
            })
            .await?;
        Ok(count)
    }

    /// Runs one of the Lua scripts (atomic on the server) with its keys and arguments.
    async fn script<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        idempotent: bool,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        self.run(operation, idempotent, |mut connection| {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await
    }

    /// Runs one operation within the timeout. An `idempotent` one (reads, and the writes whose
    /// repetition is harmless) that meets a dropped connection (Redis restarted) is tried once
    /// more on a fresh one; the others are not (they may have been applied).
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        idempotent: bool,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let bounded = async {
            let mut result = attempt(self.connection()?).await;
            if idempotent
                && let Err(error) = &result
                && (error.is_io_error() || error.is_unrecoverable_error())
            {
                self.forget_connection();
                result = attempt(self.connection()?).await;
            }
            result.map_err(|error| StoreError::new(describe_error(&error)))
        };
        let outcome = match tokio::time::timeout(self.timeout, bounded).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::new(format!(
                "timed out after {} ms",
                self.timeout.as_millis()
            ))),
        };
        match &outcome {
            Ok(_) => self.note_up(),
            Err(error) => {
                // A fresh connection next time: a hung or refused one is not reused.
                self.forget_connection();
                self.note_down(operation, error);
            }
        }
        outcome
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.manager.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        // One connection attempt per operation (no retries inside it): the caller's timeout
        // is short, and the next operation tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|error| StoreError::new(describe_error(&error)))?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    fn forget_connection(&self) {
        *self.manager.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn note_up(&self) {
        if self.state.swap(UP, Ordering::Relaxed) == DOWN {
            tracing::info!(store = %self.shown, "token store answers again");
        }
    }

    fn note_down(&self, operation: &str, error: &StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.detail.clone());
        if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(
                store = %self.shown,
                operation,
                error = %error.detail,
                "token store does not answer: exchanged tokens are refused with \
                 revocation_unavailable until it does (other tokens are unaffected)"
            );
        }
    }
}

/// `quay-authz:` and the parts joined by `:`.
fn key(parts: &[&str]) -> String {
    let mut key = String::from(PREFIX);
    key.push_str(&parts.join(":"));
    key
}

/// The entries that decode; one that does not (written by something else) is skipped with a
/// warning rather than hiding every other.
fn decode_all(entries: &[String]) -> Vec<IssuedToken> {
    entries
        .iter()
        .filter_map(|text| match serde_json::from_str(text) {
            Ok(token) => Some(token),
            Err(_) => {
                tracing::warn!("token store: skipped an entry that is not an issued token");
                None
            }
        })
        .collect()
}

/// What failed, in words that never carry the URL or the password (the crate's own messages
/// are not passed on: an AUTH reply or a parse error could echo what was sent).
fn describe_error(error: &redis::RedisError) -> String {
    use redis::ErrorKind;
    if error.is_timeout() {
        return "timed out".into();
    }
    if error.is_connection_refusal() {
        return "connection refused".into();
    }
    if error.is_connection_dropped() {
        return "connection lost".into();
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed => "authentication failed".into(),
        ErrorKind::Server(redis::ServerErrorKind::NoPerm) => "permission denied (ACL)".into(),
        ErrorKind::Server(redis::ServerErrorKind::BusyLoading) => {
            "Redis is loading its data".into()
        }
        ErrorKind::Server(redis::ServerErrorKind::ReadOnly) => {
            "Redis is a read-only replica".into()
        }
        ErrorKind::Server(_) => match error.code() {
            // AUTH against a server without a password, or other NOAUTH/WRONGPASS replies.
            Some(code) if code.contains("AUTH") || code.contains("PASS") => {
                "authentication failed".into()
            }
            Some(code) => format!("Redis refused the command ({code})"),
            None => "Redis refused the command".into(),
        },
        ErrorKind::Io => "network error".into(),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            "unexpected reply (is this a Redis server?)".into()
        }
        ErrorKind::InvalidClientConfig => "invalid client configuration".into(),
        _ => "Redis client error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_fixed_prefix() {
        assert_eq!(key(&["token", "j1"]), "quay-authz:token:j1");
        assert_eq!(
            key(&["mints", "github:1:2", "120"]),
            "quay-authz:mints:github:1:2:120"
        );
    }
}
