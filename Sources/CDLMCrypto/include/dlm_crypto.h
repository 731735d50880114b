#ifndef DLM_CRYPTO_H
#define DLM_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

/* The digests the peer transport needs, from the system's libcrypto (OpenSSL 3, Debian's libssl-dev): HMAC-SHA256
 * of each peer frame with the cluster key, and SHA-256 of the cluster name. */

/* An HMAC-SHA256 key, set up once: each MAC copies it, so a frame costs no key schedule. */
typedef struct dlm_hmac_key dlm_hmac_key;

/* A key of `length` bytes; NULL when libcrypto cannot make one (out of memory, no SHA-256 provider). */
dlm_hmac_key *dlm_hmac_key_new(const uint8_t *key, size_t length);
void dlm_hmac_key_free(dlm_hmac_key *key);

/* HMAC-SHA256 of `first` followed by `second` (either may be empty) into `mac` (32 bytes). Returns 1, or 0 when
 * libcrypto failed (out of memory). */
int dlm_hmac_sha256(const dlm_hmac_key *key, const uint8_t *first, size_t first_length, const uint8_t *second,
                    size_t second_length, uint8_t mac[32]);

/* SHA-256 of `data` into `digest` (32 bytes). Returns 1, or 0 when libcrypto failed. */
int dlm_sha256(const uint8_t *data, size_t length, uint8_t digest[32]);

/* Whether the `length` bytes at `a` and `b` are equal, in a time that does not depend on where they differ. */
int dlm_equal_in_constant_time(const uint8_t *a, const uint8_t *b, size_t length);

#endif
