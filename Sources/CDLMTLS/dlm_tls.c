#include "dlm_tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

struct dlm_tls_context {
    SSL_CTX *ssl;
};

struct dlm_tls {
    SSL *ssl;
    BIO *network_in;  /* bytes from the peer, fed by the caller */
    BIO *network_out; /* bytes for the peer, taken by the caller */
};

/* `what`, then OpenSSL's earliest queued reason, into `error`; the queue is emptied. */
static void describe(char *error, size_t error_length, const char *what) {
    unsigned long code = ERR_get_error();
    const char *reason = code != 0 ? ERR_reason_error_string(code) : NULL;
    if (error != NULL && error_length > 0) {
        if (reason != NULL)
            snprintf(error, error_length, "%s: %s", what, reason);
        else
            snprintf(error, error_length, "%s", what);
    }
    ERR_clear_error();
}

static int use_key(SSL_CTX *ssl, const uint8_t *key, size_t key_length, char *error, size_t error_length) {
    BIO *bytes = BIO_new_mem_buf(key, (int)key_length);
    EVP_PKEY *private_key = bytes != NULL ? PEM_read_bio_PrivateKey(bytes, NULL, NULL, NULL) : NULL;
    BIO_free(bytes);
    if (private_key == NULL) {
        describe(error, error_length, "cannot read the private key (PEM, not encrypted)");
        return 0;
    }
    int used = SSL_CTX_use_PrivateKey(ssl, private_key);
    EVP_PKEY_free(private_key);
    if (used != 1) {
        describe(error, error_length, "the private key is not the certificate's, or cannot be used");
        return 0;
    }
    if (SSL_CTX_check_private_key(ssl) != 1) {
        describe(error, error_length, "the private key is not the certificate's");
        return 0;
    }
    return 1;
}

static SSL_CTX *new_context(int server, char *error, size_t error_length) {
    SSL_CTX *ssl = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ssl == NULL) {
        describe(error, error_length, "cannot set up TLS");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ssl, TLS1_2_VERSION);
    /* An idle connection keeps no read or write buffer: dlmd may hold 10,000 of them. */
    SSL_CTX_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    return ssl;
}

/* A context that owns `ssl` (freed if there is no memory for the context). */
static dlm_tls_context *wrap(SSL_CTX *ssl, char *error, size_t error_length) {
    dlm_tls_context *context = OPENSSL_malloc(sizeof *context);
    if (context == NULL) {
        describe(error, error_length, "out of memory");
        SSL_CTX_free(ssl);
        return NULL;
    }
    context->ssl = ssl;
    return context;
}

dlm_tls_context *dlm_tls_server_context(const char *certificate_file, const uint8_t *key, size_t key_length,
                                        const char *client_ca_file, char *error, size_t error_length) {
    SSL_CTX *ssl = new_context(1, error, error_length);
    if (ssl == NULL) return NULL;
    if (SSL_CTX_use_certificate_chain_file(ssl, certificate_file) != 1) {
        describe(error, error_length, "cannot read the certificate (PEM)");
        goto fail;
    }
    if (!use_key(ssl, key, key_length, error, error_length)) goto fail;
    if (SSL_CTX_load_verify_locations(ssl, client_ca_file, NULL) != 1) {
        describe(error, error_length, "cannot read the client certificate authorities (PEM)");
        goto fail;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca_file);
    if (names == NULL) {
        describe(error, error_length, "no certificate in the client certificate authorities");
        goto fail;
    }
    SSL_CTX_set_client_CA_list(ssl, names);
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* Clients do not resume sessions: no tickets, no cache. */
    SSL_CTX_set_num_tickets(ssl, 0);
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    return wrap(ssl, error, error_length);
fail:
    SSL_CTX_free(ssl);
    return NULL;
}

dlm_tls_context *dlm_tls_client_context(const char *ca_file, const char *certificate_file, const uint8_t *key,
                                        size_t key_length, char *error, size_t error_length) {
    SSL_CTX *ssl = new_context(0, error, error_length);
    if (ssl == NULL) return NULL;
    if (ca_file != NULL ? SSL_CTX_load_verify_locations(ssl, ca_file, NULL) != 1
                        : SSL_CTX_set_default_verify_paths(ssl) != 1) {
        describe(error, error_length, "cannot read the certificate authorities (PEM)");
        goto fail;
    }
    if (certificate_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ssl, certificate_file) != 1) {
            describe(error, error_length, "cannot read the client certificate (PEM)");
            goto fail;
        }
        if (key == NULL) {
            snprintf(error, error_length, "a client certificate needs its private key");
            goto fail;
        }
        if (!use_key(ssl, key, key_length, error, error_length)) goto fail;
    }
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    return wrap(ssl, error, error_length);
fail:
    SSL_CTX_free(ssl);
    return NULL;
}

void dlm_tls_context_free(dlm_tls_context *context) {
    if (context == NULL) return;
    SSL_CTX_free(context->ssl);
    OPENSSL_free(context);
}

dlm_tls *dlm_tls_new(dlm_tls_context *context, const char *server_name, char *error, size_t error_length) {
    dlm_tls *connection = OPENSSL_zalloc(sizeof *connection);
    if (connection == NULL) {
        snprintf(error, error_length, "out of memory");
        return NULL;
    }
    connection->ssl = SSL_new(context->ssl);
    connection->network_in = BIO_new(BIO_s_mem());
    connection->network_out = BIO_new(BIO_s_mem());
    if (connection->ssl == NULL || connection->network_in == NULL || connection->network_out == NULL) {
        describe(error, error_length, "cannot set up a TLS connection");
        BIO_free(connection->network_in);
        BIO_free(connection->network_out);
        SSL_free(connection->ssl);
        OPENSSL_free(connection);
        return NULL;
    }
    /* An empty input BIO means "wait for more", not the end of the stream. */
    BIO_set_mem_eof_return(connection->network_in, -1);
    SSL_set_bio(connection->ssl, connection->network_in, connection->network_out);
    if (server_name == NULL) {
        SSL_set_accept_state(connection->ssl);
        return connection;
    }
    unsigned char address[sizeof(struct in6_addr)];
    int named;
    if (inet_pton(AF_INET, server_name, address) == 1 || inet_pton(AF_INET6, server_name, address) == 1) {
        named = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(connection->ssl), server_name);
    } else {
        named = SSL_set1_host(connection->ssl, server_name) == 1 &&
                SSL_set_tlsext_host_name(connection->ssl, server_name) == 1;
    }
    if (named != 1) {
        describe(error, error_length, "cannot check the server's name");
        dlm_tls_free(connection);
        return NULL;
    }
    SSL_set_connect_state(connection->ssl);
    return connection;
}

void dlm_tls_free(dlm_tls *connection) {
    if (connection == NULL) return;
    SSL_free(connection->ssl); /* and both BIOs */
    OPENSSL_free(connection);
}

int dlm_tls_feed(dlm_tls *connection, const uint8_t *bytes, size_t length) {
    while (length > 0) {
        int chunk = length > (1u << 30) ? (1 << 30) : (int)length;
        int written = BIO_write(connection->network_in, bytes, chunk);
        if (written <= 0) return 0;
        bytes += written;
        length -= (size_t)written;
    }
    return 1;
}

/* Why `result` of an SSL call on `connection` failed, as DLM_TLS_MORE, DLM_TLS_CLOSED or DLM_TLS_FAILED. */
static int outcome(dlm_tls *connection, int result, const char *what, char *error, size_t error_length) {
    switch (SSL_get_error(connection->ssl, result)) {
    case SSL_ERROR_WANT_READ:
        return DLM_TLS_MORE;
    case SSL_ERROR_ZERO_RETURN:
        return DLM_TLS_CLOSED;
    default:
        break;
    }
    long verified = SSL_get_verify_result(connection->ssl);
    if (verified != X509_V_OK) {
        char reason[160];
        snprintf(reason, sizeof reason, "%s: the certificate was refused: %s", what,
                 X509_verify_cert_error_string(verified));
        describe(error, error_length, reason);
    } else {
        describe(error, error_length, what);
    }
    return DLM_TLS_FAILED;
}

int dlm_tls_handshake(dlm_tls *connection, char *error, size_t error_length) {
    if (SSL_is_init_finished(connection->ssl)) return 1;
    ERR_clear_error();
    int result = SSL_do_handshake(connection->ssl);
    if (result == 1) return 1;
    int why = outcome(connection, result, "TLS handshake failed", error, error_length);
    return why == DLM_TLS_CLOSED ? DLM_TLS_FAILED : why;
}

int dlm_tls_read(dlm_tls *connection, uint8_t *buffer, size_t capacity, char *error, size_t error_length) {
    ERR_clear_error();
    int chunk = capacity > (1u << 30) ? (1 << 30) : (int)capacity;
    int result = SSL_read(connection->ssl, buffer, chunk);
    if (result > 0) return result;
    return outcome(connection, result, "TLS read failed", error, error_length);
}

int dlm_tls_write(dlm_tls *connection, const uint8_t *bytes, size_t length, char *error, size_t error_length) {
    while (length > 0) {
        ERR_clear_error();
        int chunk = length > (1u << 30) ? (1 << 30) : (int)length;
        int result = SSL_write(connection->ssl, bytes, chunk);
        if (result <= 0) {
            outcome(connection, result, "TLS write failed", error, error_length);
            return DLM_TLS_FAILED;
        }
        bytes += result;
        length -= (size_t)result;
    }
    return 1;
}

void dlm_tls_shutdown(dlm_tls *connection) {
    ERR_clear_error();
    if (SSL_is_init_finished(connection->ssl)) SSL_shutdown(connection->ssl);
    ERR_clear_error();
}

size_t dlm_tls_pending_output(const dlm_tls *connection) { return BIO_ctrl_pending(connection->network_out); }

size_t dlm_tls_take_output(dlm_tls *connection, uint8_t *buffer, size_t capacity) {
    int chunk = capacity > (1u << 30) ? (1 << 30) : (int)capacity;
    int taken = BIO_read(connection->network_out, buffer, chunk);
    return taken > 0 ? (size_t)taken : 0;
}
