/* ChaCha20-Poly1305 from libcrypto, one direction of one key (uo_wg_aead),
 * for wgcrypto.pxi. No primitive of our own: every byte is computed by
 * OpenSSL's own implementation.
 *
 * Two ways to reach it, chosen once per process (uo_wg_aead_setup):
 * - "provider" (OpenSSL 3): the default provider's ChaCha20-Poly1305
 *   functions, looked up once through the public provider API
 *   (OSSL_PROVIDER_query_operation on the provider EVP_CIPHER_fetch picked)
 *   and called per packet directly. These are the very functions EVP calls;
 *   what is skipped is EVP's per-call work on 3.0 (it asks the provider for
 *   the IV length through a parameter call on every init, among others):
 *   measured here ~50 ns of a ~875 ns 1408-byte seal.
 * - "evp": EVP_CIPHER_CTX and EVP_*Init_ex/Update/Final_ex. The fallback
 *   when the lookup fails (no such provider function, a provider without
 *   ChaCha20-Poly1305) and the path on OpenSSL 1.1; tests force it
 *   (uo_wg_aead_force_evp) so both stay proven byte-identical.
 * A context keeps the path it was made with.
 *
 * The tag: the provider's parameter call with OSSL_CIPHER_PARAM_AEAD_TAG;
 * EVP_CIPHER_CTX_ctrl's GET_TAG/SET_TAG reach the same call but on 3.0 the
 * ctrl-to-parameter translation costs ~150 ns a packet. The parameter
 * array is kept next to its context and filled once: per packet only its
 * data pointer is stored, with plain scalar stores (building it on the
 * stack each time compiled to SSE moves between libcrypto's AVX-512 calls
 * and measured ~100 ns slower here). The tag is always 16 bytes, the nonce
 * 12 (the cipher's default length; set explicitly on the EVP path). */
#ifndef UO_WGEVP_H
#define UO_WGEVP_H

#include <stddef.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#define UO_WG_NONCE 12
#define UO_WG_TAG 16

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/provider.h>

typedef struct {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_ctx_params;
    OSSL_FUNC_cipher_set_ctx_params_fn *set_ctx_params;
} uo_wg_provider;

static uo_wg_provider uo_wg_prov;       /* filled once, then read only */
static EVP_CIPHER *uo_wg_fetched;       /* held: keeps the provider loaded */
static int uo_wg_use_provider;          /* 1: new contexts take the provider path */

/* Is `name` one of the colon-separated names in `names`? */
static int uo_wg_has_name(const char *names, const char *name)
{
    size_t n = strlen(name);
    const char *p = names;
    while (p != NULL && *p) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && OPENSSL_strncasecmp(p, name, n) == 0)
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

/* Look the provider's functions up; 1 when every one was found. */
static int uo_wg_lookup(void)
{
    const OSSL_PROVIDER *prov;
    const OSSL_ALGORITHM *alg, *all;
    const OSSL_DISPATCH *d = NULL;
    const char *name;
    int no_store = 0;
    uo_wg_provider f;

    uo_wg_fetched = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (uo_wg_fetched == NULL)
        return 0;
    prov = EVP_CIPHER_get0_provider(uo_wg_fetched);
    name = EVP_CIPHER_get0_name(uo_wg_fetched);
    if (prov == NULL || name == NULL)
        return 0;
    all = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_store);
    for (alg = all; alg != NULL && alg->algorithm_names != NULL; alg++)
        if (uo_wg_has_name(alg->algorithm_names, name)) {
            d = alg->implementation;
            break;
        }
    memset(&f, 0, sizeof(f));
    for (; d != NULL && d->function_id != 0; d++) {
        switch (d->function_id) {
        case OSSL_FUNC_CIPHER_NEWCTX: f.newctx = OSSL_FUNC_cipher_newctx(d); break;
        case OSSL_FUNC_CIPHER_FREECTX: f.freectx = OSSL_FUNC_cipher_freectx(d); break;
        case OSSL_FUNC_CIPHER_ENCRYPT_INIT: f.einit = OSSL_FUNC_cipher_encrypt_init(d); break;
        case OSSL_FUNC_CIPHER_DECRYPT_INIT: f.dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
        case OSSL_FUNC_CIPHER_UPDATE: f.update = OSSL_FUNC_cipher_update(d); break;
        case OSSL_FUNC_CIPHER_FINAL: f.final = OSSL_FUNC_cipher_final(d); break;
        case OSSL_FUNC_CIPHER_GET_CTX_PARAMS:
            f.get_ctx_params = OSSL_FUNC_cipher_get_ctx_params(d); break;
        case OSSL_FUNC_CIPHER_SET_CTX_PARAMS:
            f.set_ctx_params = OSSL_FUNC_cipher_set_ctx_params(d); break;
        default: break;
        }
    }
    if (all != NULL)
        OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, all);
    f.provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
    if (f.newctx == NULL || f.freectx == NULL || f.einit == NULL || f.dinit == NULL
            || f.update == NULL || f.final == NULL || f.get_ctx_params == NULL
            || f.set_ctx_params == NULL)
        return 0;
    uo_wg_prov = f;
    return 1;
}

/* Once, with the GIL held (module import). */
static void uo_wg_aead_setup(void)
{
    static int done = 0;
    if (done)
        return;
    done = 1;
    uo_wg_use_provider = uo_wg_lookup();
    ERR_clear_error();
}

/* Tests: 1 makes contexts made from now on take the EVP path; 0 undoes it
 * (when the lookup had succeeded). */
static void uo_wg_aead_force_evp(int on)
{
    uo_wg_aead_setup();
    uo_wg_use_provider = (!on && uo_wg_prov.newctx != NULL);
}

static const char *uo_wg_aead_impl(void)
{
    uo_wg_aead_setup();
    return uo_wg_use_provider ? "provider" : "evp";
}

typedef struct {
    EVP_CIPHER_CTX *evp;    /* the EVP path's context, or NULL */
    void *alg;              /* the provider path's context, or NULL */
    OSSL_PARAM tag[2];      /* the tag parameter, filled once */
} uo_wg_aead;

static void uo_wg_tag_param(OSSL_PARAM p[2])
{
    p[0].key = OSSL_CIPHER_PARAM_AEAD_TAG;
    p[0].data_type = OSSL_PARAM_OCTET_STRING;
    p[0].data = NULL;
    p[0].data_size = UO_WG_TAG;
    p[0].return_size = OSSL_PARAM_UNMODIFIED;
    p[1].key = NULL;
    p[1].data_type = 0;
    p[1].data = NULL;
    p[1].data_size = 0;
    p[1].return_size = 0;
}

static inline int uo_wg_get_tag(uo_wg_aead *a, unsigned char *tag)
{
    a->tag[0].data = tag;
    a->tag[0].return_size = OSSL_PARAM_UNMODIFIED;
    if (a->alg != NULL)
        return uo_wg_prov.get_ctx_params(a->alg, a->tag);
    return EVP_CIPHER_CTX_get_params(a->evp, a->tag);
}

static inline int uo_wg_set_tag(uo_wg_aead *a, const unsigned char *tag)
{
    a->tag[0].data = (void *)tag;
    a->tag[0].return_size = OSSL_PARAM_UNMODIFIED;
    if (a->alg != NULL)
        return uo_wg_prov.set_ctx_params(a->alg, a->tag);
    return EVP_CIPHER_CTX_set_params(a->evp, a->tag);
}
#else   /* OpenSSL 1.1: the EVP path only, the tag through the ctrl */
static void uo_wg_aead_setup(void) {}
static void uo_wg_aead_force_evp(int on) { (void)on; }
static const char *uo_wg_aead_impl(void) { return "evp"; }

typedef struct {
    EVP_CIPHER_CTX *evp;
    void *alg;              /* always NULL */
} uo_wg_aead;

static inline int uo_wg_get_tag(uo_wg_aead *a, unsigned char *tag)
{
    return EVP_CIPHER_CTX_ctrl(a->evp, EVP_CTRL_AEAD_GET_TAG, UO_WG_TAG, tag);
}

static inline int uo_wg_set_tag(uo_wg_aead *a, const unsigned char *tag)
{
    return EVP_CIPHER_CTX_ctrl(a->evp, EVP_CTRL_AEAD_SET_TAG, UO_WG_TAG, (void *)tag);
}
#endif

/* Free (OpenSSL cleanses a context's key material on free); idempotent. */
static void uo_wg_aead_free(uo_wg_aead *a)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (a->alg != NULL) {
        uo_wg_prov.freectx(a->alg);
        a->alg = NULL;
    }
#endif
    if (a->evp != NULL) {
        EVP_CIPHER_CTX_free(a->evp);
        a->evp = NULL;
    }
}

static inline int uo_wg_live(const uo_wg_aead *a)
{
    return a->evp != NULL || a->alg != NULL;
}

/* Key one direction (enc: seal, else open) once; 0, or -1 (nothing held). */
static int uo_wg_aead_init(uo_wg_aead *a, const unsigned char *key, int enc)
{
    memset(a, 0, sizeof(*a));
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    uo_wg_tag_param(a->tag);
    uo_wg_aead_setup();
    if (uo_wg_use_provider) {
        a->alg = uo_wg_prov.newctx(uo_wg_prov.provctx);
        if (a->alg == NULL)
            return -1;
        if ((enc ? uo_wg_prov.einit(a->alg, key, 32, NULL, 0, NULL)
                 : uo_wg_prov.dinit(a->alg, key, 32, NULL, 0, NULL)) != 1) {
            uo_wg_aead_free(a);
            return -1;
        }
        return 0;
    }
#endif
    a->evp = EVP_CIPHER_CTX_new();
    if (a->evp == NULL)
        return -1;
    if (EVP_CipherInit_ex(a->evp, EVP_chacha20_poly1305(), NULL, NULL, NULL, enc) != 1
            || EVP_CIPHER_CTX_ctrl(a->evp, EVP_CTRL_AEAD_SET_IVLEN, UO_WG_NONCE, NULL) != 1
            || EVP_CipherInit_ex(a->evp, NULL, NULL, key, NULL, enc) != 1) {
        uo_wg_aead_free(a);
        return -1;
    }
    return 0;
}

/* One message through a: init with the 12-byte iv, then (set_tag, for an
 * open) the tag, aad, src -> dst (n bytes; dst == src is fine), final. 1 when
 * final succeeded, 0 when it failed (an open's tag did not match), -1 when
 * libcrypto failed before it. */
static int uo_wg_message(uo_wg_aead *a, int enc, const unsigned char *iv,
                         const unsigned char *tag, const unsigned char *aad, int aadlen,
                         const unsigned char *src, unsigned char *dst, int n)
{
    int outl = 0, fin = 0;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (a->alg != NULL) {
        size_t ol = 0, fl = 0;
        if ((enc ? uo_wg_prov.einit(a->alg, NULL, 0, iv, UO_WG_NONCE, NULL)
                 : uo_wg_prov.dinit(a->alg, NULL, 0, iv, UO_WG_NONCE, NULL)) != 1)
            return -1;
        if (!enc && uo_wg_set_tag(a, tag) != 1)
            return -1;
        if (aadlen > 0
                && uo_wg_prov.update(a->alg, NULL, &ol, (size_t)aadlen, aad, (size_t)aadlen) != 1)
            return -1;
        ol = 0;
        if (n > 0 && uo_wg_prov.update(a->alg, dst, &ol, (size_t)n, src, (size_t)n) != 1)
            return -1;
        return uo_wg_prov.final(a->alg, dst + ol, &fl, 0) == 1;
    }
#endif
    if (EVP_CipherInit_ex(a->evp, NULL, NULL, NULL, iv, enc) != 1)
        return -1;
    if (!enc && uo_wg_set_tag(a, tag) != 1)
        return -1;
    if (aadlen > 0 && EVP_CipherUpdate(a->evp, NULL, &outl, aad, aadlen) != 1)
        return -1;
    outl = 0;
    if (n > 0 && EVP_CipherUpdate(a->evp, dst, &outl, src, n) != 1)
        return -1;
    return EVP_CipherFinal_ex(a->evp, dst + outl, &fin) == 1;
}

/* dst = ChaCha20-Poly1305 of src (n bytes; dst == src is fine) under the
 * 12-byte iv and aad, the tag to `tag`. 0, or -1 when libcrypto failed. */
static int uo_wg_aead_seal(uo_wg_aead *a, const unsigned char *iv, const unsigned char *aad,
                           int aadlen, const unsigned char *src, unsigned char *dst, int n,
                           unsigned char *tag)
{
    if (uo_wg_message(a, 1, iv, NULL, aad, aadlen, src, dst, n) != 1)
        return -1;
    return uo_wg_get_tag(a, tag) == 1 ? 0 : -1;
}

/* dst = the plaintext of src (n bytes; dst == src is fine) checked against
 * tag. 0 when it authenticates; 1 when not (dst then holds unauthenticated
 * bytes: the caller wipes them); -1 when libcrypto failed. A bad tag leaves
 * nothing on this thread's error queue for other libcrypto users. */
static int uo_wg_aead_open(uo_wg_aead *a, const unsigned char *iv, const unsigned char *aad,
                           int aadlen, const unsigned char *src, unsigned char *dst, int n,
                           const unsigned char *tag)
{
    int r = uo_wg_message(a, 0, iv, tag, aad, aadlen, src, dst, n);
    if (r == 0) {
        ERR_clear_error();
        return 1;
    }
    return r < 0 ? -1 : 0;
}

#endif
