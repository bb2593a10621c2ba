/* The AEAD tag through libcrypto's EVP interface, for wgcrypto.pxi.
 *
 * OpenSSL 3: the provider's parameter call (EVP_CIPHER_CTX_get_params /
 * set_params with OSSL_CIPHER_PARAM_AEAD_TAG). EVP_CIPHER_CTX_ctrl's
 * EVP_CTRL_AEAD_GET_TAG / SET_TAG reach the very same provider call, but on
 * 3.0 the ctrl-to-parameter translation costs ~150 ns a packet (measured
 * here: 1065 -> 920 ns per 1408-byte seal), a seventh of the packet.
 * OpenSSL 1.1 (no parameters): the ctrl. The tag is always 16 bytes. */
#ifndef UO_WGEVP_H
#define UO_WGEVP_H

#include <openssl/evp.h>
#include <openssl/opensslv.h>

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#include <openssl/core_names.h>
#include <openssl/params.h>

/* What OSSL_PARAM_construct_octet_string + _construct_end build. */
static inline void uo_wg_tag_param(OSSL_PARAM p[2], void *tag, int len)
{
    p[0].key = OSSL_CIPHER_PARAM_AEAD_TAG;
    p[0].data_type = OSSL_PARAM_OCTET_STRING;
    p[0].data = tag;
    p[0].data_size = (size_t)len;
    p[0].return_size = OSSL_PARAM_UNMODIFIED;
    p[1].key = NULL;
    p[1].data_type = 0;
    p[1].data = NULL;
    p[1].data_size = 0;
    p[1].return_size = 0;
}

/* One direction's tag parameter, kept next to its context and filled once:
 * per packet only its data pointer (and the size OpenSSL writes back) is
 * stored, with plain scalar stores. Building the array on the stack each
 * time compiled to SSE moves between libcrypto's AVX-512 calls; this way
 * measured ~100 ns a packet faster here, as did an -mavx2 (VEX-encoded)
 * build of the old way: probably a penalty for SSE code after AVX-512 code
 * left the upper register state dirty. */
typedef struct { OSSL_PARAM p[2]; } uo_wg_tagp;

static inline void uo_wg_tagp_init(uo_wg_tagp *t)
{
    uo_wg_tag_param(t->p, NULL, 16);
}

static inline int uo_wg_get_tag(EVP_CIPHER_CTX *ctx, uo_wg_tagp *t, unsigned char *tag)
{
    t->p[0].data = tag;
    t->p[0].return_size = OSSL_PARAM_UNMODIFIED;
    return EVP_CIPHER_CTX_get_params(ctx, t->p);
}

static inline int uo_wg_set_tag(EVP_CIPHER_CTX *ctx, uo_wg_tagp *t, const unsigned char *tag)
{
    t->p[0].data = (void *)tag;
    t->p[0].return_size = OSSL_PARAM_UNMODIFIED;
    return EVP_CIPHER_CTX_set_params(ctx, t->p);
}
#else
typedef struct { int unused; } uo_wg_tagp;

static inline void uo_wg_tagp_init(uo_wg_tagp *t)
{
    t->unused = 0;
}

static inline int uo_wg_get_tag(EVP_CIPHER_CTX *ctx, uo_wg_tagp *t, unsigned char *tag)
{
    (void)t;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag);
}

static inline int uo_wg_set_tag(EVP_CIPHER_CTX *ctx, uo_wg_tagp *t, const unsigned char *tag)
{
    (void)t;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, (void *)tag);
}
#endif

#endif
