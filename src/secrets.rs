//! Where a delivery's secrets come from: the second seam next to
//! [`Scheme`](crate::scheme::Scheme).
//!
//! By default every delivery is checked against one fixed list of secrets
//! (the current one, plus the previous one during a rotation), keyed once
//! when the layer is built.
//!
//! Under Klikit's Partner API v1 a partner has one webhook secret per
//! business, and a POS vendor serving many merchants receives deliveries
//! signed with many secrets on one URL. Each delivery names its subscription
//! (`X-Klikit-Webhook-Id`, read by [`KlikitV1`](crate::scheme::KlikitV1));
//! a [`SecretResolver`] maps it to that subscription's secrets, newest first.
//! [`SubscriptionSecrets`] is the built-in map; back the trait with your own
//! database for anything that changes at run time. Build the layer with
//! [`KlikitWebhookLayer::per_subscription`](crate::KlikitWebhookLayer::per_subscription).
//!
//! - The resolver is consulted once per delivery, before the body is read,
//!   under the layer's [store timeout](crate::KlikitWebhookLayer::with_store_timeout).
//! - A subscription it does not know (or a delivery that names none) is
//!   refused exactly like a wrong signature: the body is read and run
//!   through HMAC-SHA256 under a decoy key, so the answer (401
//!   `{"error":"invalid signature"}`) and its timing do not tell an unknown
//!   subscription from a forgery.
//! - A resolver error or timeout answers 503 with `Retry-After`, like a
//!   store failure: Klikit retries later, and nothing is lost.
//! - Secrets are never logged, nor are they in any `Debug` output.
//!
//! ```
//! use std::collections::HashMap;
//! use axum::{Router, body::Body, http::StatusCode, routing::post};
//! use klikit_webhook::{
//!     KlikitWebhookLayer, WebhookSecret,
//!     scheme::{KlikitV1, Outgoing, signed_request_with},
//!     secrets::SubscriptionSecrets,
//! };
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let secret = |s: &str| WebhookSecret::new(s).unwrap();
//! let subscriptions = SubscriptionSecrets::new(HashMap::from([
//!     ("wh_business_42".to_owned(), vec![secret("secret-of-business-42-new"), secret("secret-of-business-42-old")]),
//!     ("wh_business_43".to_owned(), vec![secret("secret-of-business-43")]),
//! ]))
//! .unwrap();
//! let app = Router::new()
//!     .route("/webhooks/klikit", post(|| async { "ok" }))
//!     .layer(KlikitWebhookLayer::per_subscription(subscriptions).with_scheme(KlikitV1::new()));
//!
//! let body = br#"{"event_id":"0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"}"#;
//! let delivery = Outgoing::new("0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f", "order.placed.v1", body);
//! // Signed with business 42's previous secret, still valid during the rotation.
//! let request = signed_request_with::<Body>(&KlikitV1::new(), &secret("secret-of-business-42-old"), &delivery.with_subscription("wh_business_42"));
//! assert_eq!(app.clone().oneshot(request).await.unwrap().status(), StatusCode::OK);
//! // An unknown subscription is a wrong signature.
//! let request = signed_request_with::<Body>(&KlikitV1::new(), &secret("secret-of-business-43"), &delivery.with_subscription("wh_nobody"));
//! assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```
//!
//! A resolver over your own database caches what it keyed: build each
//! subscription's [`Verifier`] once (keying an HMAC per secret) and hand out
//! the `Arc`, rather than re-keying on every delivery.
//!
//! ```
//! use std::{collections::HashMap, sync::{Arc, RwLock}};
//! use async_trait::async_trait;
//! use klikit_webhook::{WebhookSecret, secrets::{ResolveError, SecretResolver}, signature::Verifier};
//!
//! #[derive(Debug, Default)]
//! struct FromDatabase {
//!     cache: RwLock<HashMap<String, Arc<Verifier>>>,
//! }
//!
//! impl FromDatabase {
//!     async fn load(&self, subscription: &str) -> Result<Vec<String>, std::io::Error> {
//!         // SELECT secret FROM webhook_secrets WHERE subscription = $1 ORDER BY created_at DESC
//!         Ok(vec![format!("secret-for-{subscription}")])
//!     }
//! }
//!
//! #[async_trait]
//! impl SecretResolver for FromDatabase {
//!     async fn resolve(&self, subscription: &str) -> Result<Option<Arc<Verifier>>, ResolveError> {
//!         if let Some(verifier) = self.cache.read().unwrap().get(subscription) {
//!             return Ok(Some(verifier.clone()));
//!         }
//!         let secrets = self.load(subscription).await.map_err(ResolveError::backend)?;
//!         let secrets = secrets.into_iter().filter_map(|s| WebhookSecret::new(s).ok());
//!         let Some(verifier) = Verifier::from_secrets(secrets).map(Arc::new) else {
//!             return Ok(None); // unknown: refused as a wrong signature
//!         };
//!         self.cache.write().unwrap().insert(subscription.to_owned(), verifier.clone());
//!         Ok(Some(verifier))
//!     }
//! }
//! ```

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{ConfigError, WebhookSecret, scheme::Delivery, signature::Verifier, store::BoxError};

/// Looks up a subscription's secrets. See the [module docs](crate::secrets).
#[async_trait]
pub trait SecretResolver: fmt::Debug + Send + Sync + 'static {
    /// The verifier for `subscription`'s secrets (newest first, keyed
    /// once and shared), or `None` if the subscription is unknown.
    ///
    /// Never log the secrets. `subscription` is the sender's unverified
    /// header: use it only as a lookup key.
    ///
    /// # Errors
    ///
    /// A [`ResolveError`] when the lookup itself fails (the layer answers
    /// 503 and Klikit retries); an unknown subscription is `Ok(None)`.
    async fn resolve(&self, subscription: &str) -> Result<Option<Arc<Verifier>>, ResolveError>;
}

#[async_trait]
impl<T: SecretResolver + ?Sized> SecretResolver for Arc<T> {
    async fn resolve(&self, subscription: &str) -> Result<Option<Arc<Verifier>>, ResolveError> {
        (**self).resolve(subscription).await
    }
}

/// Why a [`SecretResolver`] could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The backend failed (connection lost, query error, ...).
    #[error("secret resolver backend error: {0}")]
    Backend(#[source] BoxError),
    /// The lookup did not finish within the layer's store timeout.
    #[error("secret resolver did not answer within {0:?}")]
    Timeout(Duration),
}

impl ResolveError {
    /// Wraps any backend error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }
}

/// A fixed map from subscription id to its secrets, newest first: the
/// built-in [`SecretResolver`]. Every secret is keyed once, when the map is
/// built.
///
/// See the [module docs](crate::secrets) for an example.
#[derive(Clone, Default)]
pub struct SubscriptionSecrets {
    verifiers: HashMap<Box<str>, Arc<Verifier>>,
}

impl SubscriptionSecrets {
    /// Keys every subscription's secrets (newest first:
    /// [`KlikitEvent::secret_index`](crate::KlikitEvent::secret_index) 0 is
    /// the first of the list).
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoSecrets`] for a subscription with an empty list.
    pub fn new(secrets: HashMap<String, Vec<WebhookSecret>>) -> Result<Self, ConfigError> {
        let mut verifiers = HashMap::with_capacity(secrets.len());
        for (subscription, list) in secrets {
            let Some(verifier) = Verifier::from_secrets(list) else {
                return Err(ConfigError::NoSecrets { subscription });
            };
            verifiers.insert(subscription.into_boxed_str(), Arc::new(verifier));
        }
        Ok(Self { verifiers })
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        self.verifiers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    /// Whether `subscription` has secrets here.
    pub fn contains(&self, subscription: &str) -> bool {
        self.verifiers.contains_key(subscription)
    }
}

impl fmt::Debug for SubscriptionSecrets {
    // Counts only: subscription ids are not secret, but the list can be long.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionSecrets")
            .field("subscriptions", &self.verifiers.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SecretResolver for SubscriptionSecrets {
    async fn resolve(&self, subscription: &str) -> Result<Option<Arc<Verifier>>, ResolveError> {
        Ok(self.verifiers.get(subscription).cloned())
    }
}

/// The secrets a layer verifies with.
#[derive(Clone, Debug)]
pub(crate) enum SecretSource {
    /// The same secrets for every delivery, keyed once.
    Fixed(Arc<Verifier>),
    /// Secrets per subscription.
    Resolved {
        resolver: Arc<dyn SecretResolver>,
        /// Verifies (and always refuses) deliveries with no known secrets,
        /// doing the same work as a real verification.
        decoy: Arc<Verifier>,
        /// Secrets for deliveries that name no subscription (today's
        /// contract during the switch), if any were added.
        fallback: Option<Arc<Verifier>>,
    },
}

/// A verifier that has to be looked up: the delivery names a subscription
/// and the secrets are resolved per subscription.
pub(crate) struct Lookup<'a> {
    resolver: &'a Arc<dyn SecretResolver>,
    decoy: &'a Arc<Verifier>,
    subscription: &'a str,
}

impl Lookup<'_> {
    /// Asks the resolver, within `timeout`; the decoy for an unknown
    /// subscription.
    ///
    /// # Errors
    ///
    /// The resolver failed or did not answer within `timeout`.
    pub(crate) async fn resolve(self, timeout: Duration) -> Result<Arc<Verifier>, ResolveError> {
        let subscription = self.subscription;
        match tokio::time::timeout(timeout, self.resolver.resolve(subscription)).await {
            Ok(Ok(Some(verifier))) => Ok(verifier),
            Ok(Ok(None)) => {
                tracing::debug!(
                    subscription,
                    "subscription has no secrets; refused as a wrong signature"
                );
                Ok(self.decoy.clone())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ResolveError::Timeout(timeout)),
        }
    }
}

impl SecretSource {
    /// Secrets looked up per subscription by `resolver`.
    pub(crate) fn resolved(resolver: Arc<dyn SecretResolver>) -> Self {
        Self::Resolved {
            resolver,
            decoy: Arc::new(Verifier::decoy()),
            fallback: None,
        }
    }

    /// The verifier for `delivery`'s secrets, if no lookup is needed: the
    /// fixed secrets; with secrets per subscription, the fallback for a
    /// delivery that names no subscription (the decoy if there is none).
    /// Otherwise the [`Lookup`] to await.
    ///
    /// A delivery whose secrets are unknown gets the decoy verifier, which
    /// does the same work and then refuses it like a wrong signature (401),
    /// so an unknown subscription is not told apart from a forgery.
    pub(crate) fn verifier_for<'a>(&'a self, delivery: &'a Delivery) -> Result<&'a Arc<Verifier>, Lookup<'a>> {
        let (resolver, decoy, fallback) = match self {
            Self::Fixed(verifier) => return Ok(verifier),
            Self::Resolved {
                resolver,
                decoy,
                fallback,
            } => (resolver, decoy, fallback),
        };
        let Some(subscription) = delivery.subscription() else {
            if fallback.is_none() {
                tracing::debug!("delivery names no subscription; refused as a wrong signature");
            }
            return Ok(fallback.as_ref().unwrap_or(decoy));
        };
        Err(Lookup {
            resolver,
            decoy,
            subscription,
        })
    }

    /// How the secrets are found (for `Debug`; never the secrets).
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Fixed(verifier) => format!("{} fixed", verifier.secret_count()),
            Self::Resolved { resolver, fallback, .. } => format!(
                "per subscription ({resolver:?}), {} fallback",
                fallback.as_ref().map_or(0, |verifier| verifier.secret_count())
            ),
        }
    }

    /// Adds `secret` to a fixed list, or to the fallback of deliveries that
    /// name no subscription.
    pub(crate) fn with_secret(self, secret: WebhookSecret) -> Self {
        match self {
            Self::Fixed(verifier) => Self::Fixed(Arc::new(Verifier::clone(&verifier).with_secret(secret))),
            Self::Resolved {
                resolver,
                decoy,
                fallback,
            } => {
                let fallback = match fallback {
                    Some(verifier) => Verifier::clone(&verifier).with_secret(secret),
                    None => Verifier::new(secret),
                };
                Self::Resolved {
                    resolver,
                    decoy,
                    fallback: Some(Arc::new(fallback)),
                }
            }
        }
    }
}
