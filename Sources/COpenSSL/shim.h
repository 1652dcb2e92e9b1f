// OpenSSL 3 (Debian 12: libssl-dev 3.0). Macros Swift cannot call are wrapped in static inline
// functions (ds_*), and the two pieces of C that OpenSSL calls back into live here too: a
// memory BIO over buffers the Swift side owns (no allocation per record), and the TLS 1.3
// external-PSK session callbacks.
#ifndef DEVSTREAM_COPENSSL_SHIM_H
#define DEVSTREAM_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <string.h>

static inline int ds_ctx_tls13_only(SSL_CTX *ctx) {
    return SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1
        && SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1;
}
static inline void ds_ctx_set_mode(SSL_CTX *ctx) {
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_clear_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
}
static inline void ds_ctx_set_app_data(SSL_CTX *ctx, void *p) { SSL_CTX_set_app_data(ctx, p); }
static inline int ds_verify_peer_required(void) { return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT; }
static inline int ds_verify_peer(void) { return SSL_VERIFY_PEER; }
static inline int ds_tls13_version(void) { return TLS1_3_VERSION; }

// ---- A BIO over two caller-owned buffers -------------------------------------------------
// `out` collects the records SSL writes (the caller sends them in one batch and resets
// out_len); `in` holds bytes the caller received (SSL consumes from in_off). An empty `in` or a
// full `out` is a retry ("would block"): SSL never touches the socket itself.
typedef struct ds_bio_buffers {
    unsigned char *out; size_t out_len; size_t out_cap;
    unsigned char *in; size_t in_len; size_t in_off;
} ds_bio_buffers;

static inline int ds_bio_write_cb(BIO *b, const char *data, int len) {
    ds_bio_buffers *p = (ds_bio_buffers *)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t space = p->out_cap - p->out_len;
    if (len <= 0) return 0;
    if (space == 0) { BIO_set_retry_write(b); return -1; }
    size_t n = (size_t)len < space ? (size_t)len : space;
    memcpy(p->out + p->out_len, data, n);
    p->out_len += n;
    return (int)n;
}
static inline int ds_bio_read_cb(BIO *b, char *data, int len) {
    ds_bio_buffers *p = (ds_bio_buffers *)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t avail = p->in_len - p->in_off;
    if (len <= 0) return 0;
    if (avail == 0) { BIO_set_retry_read(b); return -1; }
    size_t n = (size_t)len < avail ? (size_t)len : avail;
    memcpy(data, p->in + p->in_off, n);
    p->in_off += n;
    return (int)n;
}
static inline long ds_bio_ctrl_cb(BIO *b, int cmd, long num, void *ptr) {
    (void)num; (void)ptr;
    ds_bio_buffers *p = (ds_bio_buffers *)BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return p ? (long)(p->in_len - p->in_off) : 0;
    case BIO_CTRL_WPENDING: return p ? (long)p->out_len : 0;
    default: return 0;
    }
}
static inline int ds_bio_create_cb(BIO *b) { BIO_set_init(b, 1); return 1; }

/// The BIO method (make it once; it is never freed).
static inline BIO_METHOD *ds_bio_method_new(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "devstream buffers");
    if (!m) return NULL;
    BIO_meth_set_write(m, ds_bio_write_cb);
    BIO_meth_set_read(m, ds_bio_read_cb);
    BIO_meth_set_ctrl(m, ds_bio_ctrl_cb);
    BIO_meth_set_create(m, ds_bio_create_cb);
    return m;
}
static inline BIO *ds_bio_new(BIO_METHOD *m, ds_bio_buffers *p) {
    BIO *b = BIO_new(m);
    if (b) BIO_set_data(b, p);
    return b;
}

// ---- TLS 1.3 external PSK ------------------------------------------------------------------
// The key lives in the SSL_CTX's app data; both ends use the identity below and the
// TLS_AES_128_GCM_SHA256 suite's hash (SHA-256) for the PSK.
typedef struct ds_psk { unsigned char key[32]; } ds_psk;
#define DS_PSK_IDENTITY "devstream-psk-v1"
// Both ends' SSL_CTX session id context (SSL_CTX_set_session_id_context) and the PSK
// session's must match, or OpenSSL refuses the session.
#define DS_SID_CONTEXT "devstream"
static inline int ds_ctx_set_sid_context(SSL_CTX *ctx) {
    return SSL_CTX_set_session_id_context(ctx, (const unsigned char *)DS_SID_CONTEXT, strlen(DS_SID_CONTEXT));
}

static inline SSL_SESSION *ds_psk_session(SSL *ssl, const ds_psk *k) {
    static const unsigned char aes128gcm[2] = { 0x13, 0x01 };
    const SSL_CIPHER *cipher = SSL_CIPHER_find(ssl, aes128gcm);
    if (!cipher) return NULL;
    SSL_SESSION *s = SSL_SESSION_new();
    if (!s) return NULL;
    if (!SSL_SESSION_set1_master_key(s, k->key, sizeof k->key) || !SSL_SESSION_set_cipher(s, cipher)
        || !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)
        || !SSL_SESSION_set1_id_context(s, (const unsigned char *)DS_SID_CONTEXT, strlen(DS_SID_CONTEXT))) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return s;
}
static inline int ds_psk_use_session_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
                                        SSL_SESSION **sess) {
    const ds_psk *k = (const ds_psk *)SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    *sess = NULL; *id = NULL; *idlen = 0;
    if (!k) return 1;
    SSL_SESSION *s = ds_psk_session(ssl, k);
    if (!s) return 0;
    if (md != NULL && SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(s)) != md) {
        SSL_SESSION_free(s);   // after a HelloRetryRequest for another hash: no PSK
        return 1;
    }
    *sess = s;
    *id = (const unsigned char *)DS_PSK_IDENTITY;
    *idlen = strlen(DS_PSK_IDENTITY);
    return 1;
}
static inline int ds_psk_find_session_cb(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess) {
    const ds_psk *k = (const ds_psk *)SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    *sess = NULL;
    if (!k) return 1;
    if (idlen != strlen(DS_PSK_IDENTITY) || memcmp(id, DS_PSK_IDENTITY, idlen) != 0) return 1;
    *sess = ds_psk_session(ssl, k);
    return *sess ? 1 : 0;
}
static inline void ds_ctx_use_psk(SSL_CTX *ctx, ds_psk *k) {
    SSL_CTX_set_app_data(ctx, k);
    SSL_CTX_set_psk_use_session_callback(ctx, ds_psk_use_session_cb);
    SSL_CTX_set_psk_find_session_callback(ctx, ds_psk_find_session_cb);
}
#endif
