#ifndef DLM_TLS_H
#define DLM_TLS_H

#include <stddef.h>
#include <stdint.h>

/* TLS for dlmd's TCP clients, from the system's libssl (OpenSSL 3, Debian's libssl-dev). A connection never touches
 * a socket: the caller feeds it the bytes read from the network and takes from it the bytes to send (memory BIOs),
 * so that it runs inside an event loop's channel handler. Every function that can fail writes a message of at most
 * `error_length` bytes into `error`: OpenSSL's reason, and for a refused certificate the verifier's ("certificate
 * has expired", "unable to get local issuer certificate"). */

/* The settings shared by connections: certificate, key, trusted authorities. Safe to use from many threads. */
typedef struct dlm_tls_context dlm_tls_context;

/* A server's context: its certificate chain (PEM file), its private key (PEM bytes, read by the caller from a file
 * it checked), and the authorities whose client certificates it accepts (PEM file). A client without such a
 * certificate is refused in the handshake. TLS 1.2 or later. NULL on failure. */
dlm_tls_context *dlm_tls_server_context(const char *certificate_file, const uint8_t *key, size_t key_length,
                                        const char *client_ca_file, char *error, size_t error_length);

/* A client's context: the authorities it trusts to name servers (PEM file; NULL: the system's), and its own
 * certificate and key (PEM file and bytes; NULL: none). TLS 1.2 or later. NULL on failure. */
dlm_tls_context *dlm_tls_client_context(const char *ca_file, const char *certificate_file, const uint8_t *key,
                                        size_t key_length, char *error, size_t error_length);

void dlm_tls_context_free(dlm_tls_context *context);

/* One connection. */
typedef struct dlm_tls dlm_tls;

/* A server's connection (server_name NULL), or a client's that checks that the server's certificate names
 * `server_name` (a DNS name, or an IPv4 / IPv6 address as text). NULL on failure. */
dlm_tls *dlm_tls_new(dlm_tls_context *context, const char *server_name, char *error, size_t error_length);
void dlm_tls_free(dlm_tls *connection);

/* Hands over `length` bytes read from the network. Returns 1, or 0 when out of memory. */
int dlm_tls_feed(dlm_tls *connection, const uint8_t *bytes, size_t length);

enum {
    DLM_TLS_MORE = 0,     /* it needs more bytes from the network */
    DLM_TLS_CLOSED = -1,  /* the peer closed the session (close_notify) */
    DLM_TLS_FAILED = -2,  /* a handshake or record failed; see `error` */
};

/* Advances the handshake: 1 when it is complete, else DLM_TLS_MORE or DLM_TLS_FAILED. */
int dlm_tls_handshake(dlm_tls *connection, char *error, size_t error_length);

/* Decrypts into `buffer`: the count of bytes (> 0), or DLM_TLS_MORE, DLM_TLS_CLOSED or DLM_TLS_FAILED. */
int dlm_tls_read(dlm_tls *connection, uint8_t *buffer, size_t capacity, char *error, size_t error_length);

/* Encrypts all `length` bytes (length > 0). Returns 1, or DLM_TLS_FAILED. */
int dlm_tls_write(dlm_tls *connection, const uint8_t *bytes, size_t length, char *error, size_t error_length);

/* Starts a clean close: queues close_notify for the peer. */
void dlm_tls_shutdown(dlm_tls *connection);

/* How many bytes wait to be sent, and takes up to `capacity` of them into `buffer` (returns the count). */
size_t dlm_tls_pending_output(const dlm_tls *connection);
size_t dlm_tls_take_output(dlm_tls *connection, uint8_t *buffer, size_t capacity);

#endif
