//! Certificate lifetimes: when a certificate is valid, and when its holder renews it.
//!
//! Both sides renew at two thirds of the lifetime: the agent its client certificate, the
//! controller its server certificate. A third of the lifetime is left to ride out a
//! controller that is down or a host that is switched off.

use std::time::Duration;

/// The validity window of a certificate, unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("no PEM certificate found")]
    NoPem,
    #[error("not an X.509 certificate: {0}")]
    Invalid(String),
}

impl Validity {
    /// The validity of the first certificate in `pem`.
    pub fn of_pem(pem: &str) -> Result<Validity, CertError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| match e {
            x509_parser::nom::Err::Error(x509_parser::error::PEMError::MissingHeader)
            | x509_parser::nom::Err::Failure(x509_parser::error::PEMError::MissingHeader) => {
                CertError::NoPem
            }
            other => CertError::Invalid(other.to_string()),
        })?;
        Validity::of_der(&block.contents)
    }

    /// The validity of a DER certificate.
    pub fn of_der(der: &[u8]) -> Result<Validity, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Invalid(e.to_string()))?;
        let v = cert.validity();
        Ok(Validity {
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        })
    }

    /// When the holder should renew: two thirds into the lifetime.
    pub fn renew_at(&self) -> i64 {
        let life = (self.not_after - self.not_before).max(0);
        self.not_before + life * 2 / 3
    }

    /// Seconds from `now` until renewal is due (0 when due or past).
    pub fn until_renewal(&self, now: i64) -> Duration {
        Duration::from_secs((self.renew_at() - now).max(0) as u64)
    }

    pub fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// What the controller needs of a client certificate: its validity and subject CN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub validity: Validity,
    pub common_name: Option<String>,
}

impl Leaf {
    pub fn of_der(der: &[u8]) -> Result<Leaf, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Invalid(e.to_string()))?;
        let v = cert.validity();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(Leaf {
            validity: Validity {
                not_before: v.not_before.timestamp(),
                not_after: v.not_after.timestamp(),
            },
            common_name,
        })
    }
}

/// How far a new certificate's `not_before` is set back, to tolerate clocks that lag the
/// controller's: five minutes, or a tenth of a short lifetime.
pub fn backdate(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let v = Validity {
            not_before: 1000,
            not_after: 1300,
        };
        assert_eq!(v.renew_at(), 1200);
        assert_eq!(v.until_renewal(1100), Duration::from_secs(100));
        assert_eq!(v.until_renewal(1250), Duration::ZERO);
        assert!(!v.expired(1299));
        assert!(v.expired(1300));
    }

    #[test]
    fn short_lifetimes_are_backdated_by_a_tenth() {
        assert_eq!(backdate(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(
            backdate(Duration::from_secs(90 * 86400)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(Validity::of_pem("hello"), Err(CertError::NoPem));
        assert!(matches!(
            Validity::of_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(CertError::Invalid(_))
        ));
        assert!(Validity::of_der(b"\x30\x03\x02\x01\x01").is_err());
    }
}
