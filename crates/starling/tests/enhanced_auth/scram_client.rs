//! The client side of SCRAM-SHA-256 (RFC 5802 section 3).

use super::*;

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

pub(crate) static NONCES: AtomicU64 = AtomicU64::new(0);

/// One SCRAM-SHA-256 login as a client does it.
#[derive(Debug)]
pub(crate) struct ScramClient {
    pub(crate) password: Vec<u8>,
    pub(crate) nonce: String,
    pub(crate) first_bare: String,
    pub(crate) auth_message: String,
    pub(crate) server_key: [u8; 32],
}

impl ScramClient {
    pub(crate) fn new(user: &str, password: &str) -> Self {
        let n = NONCES.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let nonce = format!("c{}x{n}y{t}", std::process::id());
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            password: password.as_bytes().to_vec(),
            first_bare: format!("n={name},r={nonce}"),
            nonce,
            auth_message: String::new(),
            server_key: [0; 32],
        }
    }

    pub(crate) fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// Parses server-first (checking it), returns client-final with the proof.
    pub(crate) fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
        let server_first = std::str::from_utf8(server_first).unwrap();
        let (nonce, salt, iterations) = parse_server_first(server_first);
        assert!(
            nonce.starts_with(&self.nonce) && nonce.len() >= self.nonce.len() + 16,
            "server nonce must extend ours: {server_first}"
        );
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        self.server_key = hmac(&salted, b"Server Key");
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Whether server-final carries the server signature only the real server can make.
    pub(crate) fn server_final_ok(&self, data: &[u8]) -> bool {
        let expected = format!(
            "v={}",
            B64.encode(hmac(&self.server_key, self.auth_message.as_bytes()))
        );
        data == expected.as_bytes()
    }
}

/// (combined nonce, salt, iterations) of a server-first message.
pub(crate) fn parse_server_first(s: &str) -> (String, Vec<u8>, u32) {
    let mut fields = s.split(',');
    let nonce = fields
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap()
        .to_owned();
    let salt = B64
        .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
        .unwrap();
    let iterations = fields
        .next()
        .unwrap()
        .strip_prefix("i=")
        .unwrap()
        .parse()
        .unwrap();
    (nonce, salt, iterations)
}
