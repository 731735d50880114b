#include "dlm_crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

struct dlm_hmac_key {
    EVP_MAC_CTX *keyed; /* initialized with the key; each MAC works on a copy */
};

dlm_hmac_key *dlm_hmac_key_new(const uint8_t *key, size_t length) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) return NULL;
    EVP_MAC_CTX *context = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the context holds its own reference */
    if (context == NULL) return NULL;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    dlm_hmac_key *result = OPENSSL_malloc(sizeof *result);
    if (result == NULL || EVP_MAC_init(context, key, length, params) != 1) {
        OPENSSL_free(result);
        EVP_MAC_CTX_free(context);
        return NULL;
    }
    result->keyed = context;
    return result;
}

void dlm_hmac_key_free(dlm_hmac_key *key) {
    if (key == NULL) return;
    EVP_MAC_CTX_free(key->keyed);
    OPENSSL_free(key);
}

int dlm_hmac_sha256(const dlm_hmac_key *key, const uint8_t *first, size_t first_length, const uint8_t *second,
                    size_t second_length, uint8_t mac[32]) {
    EVP_MAC_CTX *context = EVP_MAC_CTX_dup(key->keyed);
    if (context == NULL) return 0;
    size_t written = 0;
    int ok = EVP_MAC_update(context, first, first_length) == 1 && EVP_MAC_update(context, second, second_length) == 1
             && EVP_MAC_final(context, mac, &written, 32) == 1 && written == 32;
    EVP_MAC_CTX_free(context);
    return ok;
}

int dlm_sha256(const uint8_t *data, size_t length, uint8_t digest[32]) {
    unsigned int written = 0;
    return EVP_Digest(data, length, digest, &written, EVP_sha256(), NULL) == 1 && written == 32;
}

int dlm_equal_in_constant_time(const uint8_t *a, const uint8_t *b, size_t length) {
    return CRYPTO_memcmp(a, b, length) == 0;
}
