/* libkvtier C ABI.  Every function returns 0 on success or a kvtier error code (the values
 * of kvtier::Errc, see docs/protocol.md); kvtier_last_error() then describes the failure for
 * the calling thread.  Handles are opaque; a kvtier_client may be used from several threads.
 * Tensor data of a lease is read-only and valid until kvtier_lease_release(). */
#ifndef KVTIER_KVTIER_H
#define KVTIER_KVTIER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvtier_client kvtier_client;
typedef struct kvtier_lease kvtier_lease;

typedef struct {
  uint64_t lo;
  uint64_t hi;
} kvtier_key;

enum { KVTIER_OK = 0, KVTIER_E_NOT_FOUND = 2, KVTIER_E_NO_SPACE = 3, KVTIER_E_EXISTS = 7 };
enum {
  KVTIER_U8 = 0,
  KVTIER_F16 = 1,
  KVTIER_BF16 = 2,
  KVTIER_F32 = 3,
  KVTIER_I32 = 4,
  KVTIER_I64 = 5
};
enum { KVTIER_CODEC_RAW = 0, KVTIER_CODEC_NF4 = 1 };
enum { KVTIER_NF4_ROW_BLOCKS = 0, KVTIER_NF4_COLUMN_BLOCKS = 1 };

typedef struct {
  const char* name;
  int dtype; /* KVTIER_F16, ... */
  size_t rank;
  const uint64_t* shape;
  const void* data; /* contiguous row-major */
  int nf4_layout;   /* KVTIER_NF4_COLUMN_BLOCKS for keys in NF4 namespaces */
} kvtier_tensor_in;

/* Batched puts, from host or device memory (kvtier_put_batch; docs/gpu.md "Device puts"). */
typedef struct {
  const void* data;
  uint64_t bytes;
} kvtier_segment;
typedef struct {
  const char* name;
  int dtype;
  size_t rank;
  const uint64_t* shape;
  const void* data; /* contiguous row-major; unused when n_segments > 0 */
  int nf4_layout;
  int device; /* -1: host memory; else memory of this CUDA device (this process's numbering) */
  const kvtier_segment* segments; /* the tensor's bytes in pieces, in order (paged layouts) */
  size_t n_segments;
} kvtier_put_tensor;
typedef struct {
  kvtier_key key;
  const kvtier_put_tensor* tensors;
  size_t n_tensors;
} kvtier_put_item;
enum { KVTIER_STAGING_AUTO = 0, KVTIER_STAGING_HOST = 1, KVTIER_STAGING_DEVICE = 2 };

typedef struct {
  const char* name; /* valid while the lease is held */
  int dtype;
  int codec; /* KVTIER_CODEC_RAW or KVTIER_CODEC_NF4 */
  int nf4_layout;
  size_t rank;
  const uint64_t* shape;
  const void* data;   /* read-only, in the daemon's shared arena */
  uint64_t bytes;     /* stored bytes */
  uint64_t raw_bytes; /* bytes once decoded */
  uint64_t checksum;  /* XXH3-64 of the stored bytes */
} kvtier_tensor_view;

const char* kvtier_last_error(void);
const char* kvtier_version(void);

/* socket may be NULL: $KVTIER_SOCKET, else the default path. */
int kvtier_connect(const char* socket, kvtier_client** out);
/* device: the CUDA device this process computes on (-1: not said); fp16/bf16 puts land in
 * its GPU tier when the daemon has one (docs/gpu.md). */
int kvtier_connect_device(const char* socket, int device, kvtier_client** out);
void kvtier_disconnect(kvtier_client* client);

/* Writes at most `capacity` keys of the complete chunks of `tokens`; *count gets the total. */
int kvtier_chain_keys(const char* ns, const uint32_t* tokens, size_t n_tokens, size_t chunk_tokens,
                      kvtier_key* keys, size_t capacity, size_t* count);

int kvtier_lookup(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                  uint32_t* matched);
/* kvtier_lookup() with flags: KVTIER_LOOKUP_LOCAL_ONLY answers from this host's tiers only
 * (the daemon does not ask the remote tier).  Lookups read the daemon's shared lookup index
 * when the client mapped it (the default; $KVTIER_LOOKUP_INDEX=0 turns it off):
 * KVTIER_LOOKUP_DAEMON asks the daemon instead (one round trip), KVTIER_LOOKUP_INDEX answers
 * from the index only (error 9, unavailable, without one). */
#define KVTIER_LOOKUP_LOCAL_ONLY 1u
#define KVTIER_LOOKUP_DAEMON 2u
#define KVTIER_LOOKUP_INDEX 4u
int kvtier_lookup_flags(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                        uint32_t flags, uint32_t* matched);
int kvtier_put(kvtier_client* c, const char* ns, kvtier_key key, const kvtier_tensor_in* tensors,
               size_t n_tensors);
/* Puts n blocks in two round trips.  staging: KVTIER_STAGING_AUTO (device staging when a
 * tensor is device memory), _HOST or _DEVICE; device: the GPU whose staging and tier are used
 * (-1: the first device tensor's, else the client's).  results (n ints, may be NULL): each
 * item's code (0, KVTIER_E_EXISTS, ...).  Returns non-zero only when no item could be tried. */
int kvtier_put_batch(kvtier_client* c, const char* ns, const kvtier_put_item* items, size_t n,
                     int staging, int device, int* results);
int kvtier_get(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
               kvtier_lease** out);
/* Leases the blocks in the memory of GPU `device` (-1: the client's device, else the
 * daemon's first GPU tier), promoting them from the host tier on the device; a block the GPU
 * has no room for comes back as a host lease (kvtier_lease_block_device() says which).  The
 * views' data are then device pointers. */
int kvtier_get_gpu(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n, int device,
                   kvtier_lease** out);
/* kvtier_get_gpu answered as soon as the promotions are queued on the device (docs/gpu.md
 * "Async gets"): call kvtier_lease_wait() before reading the blocks. */
int kvtier_get_gpu_async(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                         int device, kvtier_lease** out);
/* Makes `stream` (a cudaStream_t; NULL: the calling thread, which blocks) wait until the
 * lease's blocks are written.  Nothing to wait for after kvtier_get_gpu or with the host
 * emulation. */
int kvtier_lease_wait(kvtier_lease* lease, void* stream);
int kvtier_remove(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                  uint32_t* removed);
/* kvtier_lease_release() sends nothing of its own by default: the released lease ids ride on
 * the client's next request ($KVTIER_RELEASE_MODE=deferred|posted|round_trip, docs/protocol.md
 * "Releases without a round trip").  This sends the waiting ones now, one-way. */
int kvtier_flush_releases(kvtier_client* c);
/* Pins cached blocks, all or nothing (docs/operations.md, "Pins"): they are not evicted from
 * the host tier (device < 0) or the GPU tier of `device` until unpinned, removed, or ttl_ms
 * passes (0: no expiry).  KVTIER_E_NOT_FOUND when a key is not cached, KVTIER_E_NO_SPACE past
 * the namespace's pin quota.  *pinned (may be NULL): the keys pinned. */
int kvtier_pin(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n, uint64_t ttl_ms,
               int device, uint32_t* pinned);
/* Drops pins; keys not pinned are not an error.  *unpinned (may be NULL): how many were. */
int kvtier_unpin(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                 uint32_t* unpinned);
/* *json is malloc'ed; free it with kvtier_free(). */
int kvtier_stats_json(kvtier_client* c, char** json);
void kvtier_free(void* p);

size_t kvtier_lease_blocks(const kvtier_lease* lease);
/* 0 when block i was found, KVTIER_E_NOT_FOUND otherwise. */
int kvtier_lease_block_status(const kvtier_lease* lease, size_t block);
/* The GPU a block was leased in, or -1 for host memory. */
int kvtier_lease_block_device(const kvtier_lease* lease, size_t block);
size_t kvtier_lease_tensor_count(const kvtier_lease* lease, size_t block);
int kvtier_lease_tensor(const kvtier_lease* lease, size_t block, size_t tensor,
                        kvtier_tensor_view* out);
/* Decodes tensor `tensor` of block `block` into dst: NF4 is dequantized to out_dtype
 * (KVTIER_F16, KVTIER_BF16 or KVTIER_F32); raw tensors are copied (out_dtype = their dtype).
 * dst_bytes must be at least elements x size of out_dtype. */
int kvtier_lease_tensor_decode(const kvtier_lease* lease, size_t block, size_t tensor,
                               int out_dtype, void* dst, size_t dst_bytes);

/* The NF4 codec (docs/nf4.md).  A tensor is viewed as [rows, cols], cols = innermost axis. */
uint64_t kvtier_nf4_encoded_size(int dtype, int nf4_layout, int double_quant, uint64_t rows,
                                 uint64_t cols);
int kvtier_nf4_quantize(int dtype, int nf4_layout, int double_quant, uint64_t rows, uint64_t cols,
                        const void* src, size_t src_bytes, void* dst, size_t dst_bytes);
int kvtier_nf4_dequantize(const void* encoded, size_t encoded_bytes, int out_dtype, void* dst,
                          size_t dst_bytes);

/* Releases the blocks and frees the handle. */
int kvtier_lease_release(kvtier_lease* lease);

#ifdef __cplusplus
}
#endif

#endif /* KVTIER_KVTIER_H */
