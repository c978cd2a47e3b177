/* Compiled as C: proves kvtier.h is a C header, and drives the C ABI end to end against the
 * daemon at $KVTIER_SOCKET.  Exit 0 on success; prints what failed otherwise. */
#include <kvtier/kvtier.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "%s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, kvtier_last_error()); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

int main(void) {
  kvtier_client* c = NULL;
  CHECK(kvtier_connect(NULL, &c) == KVTIER_OK);

  uint32_t tokens[64];
  for (int i = 0; i < 64; ++i) tokens[i] = (uint32_t)i;
  kvtier_key keys[4];
  size_t n = 0;
  CHECK(kvtier_chain_keys("c-abi/nf4", tokens, 64, 16, keys, 4, &n) == KVTIER_OK);
  CHECK(n == 4);

  /* fp32 values in [-1, 1): quantized to NF4 by the daemon (default codec). */
  static float values[16 * 128];
  for (int i = 0; i < 16 * 128; ++i) values[i] = (float)((i * 37) % 200 - 100) / 100.0f;
  uint64_t shape[2] = {16, 128};
  kvtier_tensor_in t = {"v", KVTIER_F32, 2, shape, values, KVTIER_NF4_ROW_BLOCKS};
  for (size_t i = 0; i < n; ++i) CHECK(kvtier_put(c, "c-abi/nf4", keys[i], &t, 1) == KVTIER_OK);
  CHECK(kvtier_put(c, "c-abi/nf4", keys[0], &t, 1) == KVTIER_E_EXISTS);

  /* A batch: one cached key, one block put from two pieces (a paged layout), host staging. */
  kvtier_key batch_keys[2];
  uint32_t batch_tokens[32];
  for (int i = 0; i < 32; ++i) batch_tokens[i] = (uint32_t)(1000 + i);
  CHECK(kvtier_chain_keys("c-abi/nf4", batch_tokens, 32, 16, batch_keys, 2, &n) == KVTIER_OK);
  kvtier_segment halves[2] = {{values + 8 * 128, 8 * 128 * 4}, {values, 8 * 128 * 4}};
  kvtier_put_tensor whole = {"v", KVTIER_F32, 2, shape, values, KVTIER_NF4_ROW_BLOCKS, -1, NULL, 0};
  kvtier_put_tensor pieces = {"v", KVTIER_F32, 2, shape, NULL, KVTIER_NF4_ROW_BLOCKS,
                              -1,  halves,     2};
  kvtier_put_item items[3] = {
      {keys[0], &whole, 1}, {batch_keys[0], &pieces, 1}, {batch_keys[1], &whole, 1}};
  int results[3] = {-1, -1, -1};
  CHECK(kvtier_put_batch(c, "c-abi/nf4", items, 3, KVTIER_STAGING_AUTO, -1, results) == KVTIER_OK);
  CHECK(results[0] == KVTIER_E_EXISTS);
  CHECK(results[1] == KVTIER_OK);
  CHECK(results[2] == KVTIER_OK);
  CHECK(kvtier_put_batch(c, "c-abi/nf4", items, 3, 7, -1, results) == 1); /* bad staging */
  n = 4;

  uint32_t matched = 0;
  CHECK(kvtier_lookup(c, "c-abi/nf4", keys, n, &matched) == KVTIER_OK);
  CHECK(matched == 4);
  matched = 0;
  CHECK(kvtier_lookup_flags(c, "c-abi/nf4", keys, n, KVTIER_LOOKUP_LOCAL_ONLY, &matched) ==
        KVTIER_OK);
  CHECK(matched == 4);
  CHECK(kvtier_lookup_flags(c, "c-abi/nf4", keys, n, 0x80u, &matched) == 1); /* kInvalidArgument */
  /* The shared lookup index (the default path), the daemon forced, the index forced. */
  matched = 0;
  CHECK(kvtier_lookup_flags(c, "c-abi/nf4", keys, n, KVTIER_LOOKUP_DAEMON, &matched) == KVTIER_OK);
  CHECK(matched == 4);
  matched = 0;
  CHECK(kvtier_lookup_flags(c, "c-abi/nf4", keys, n, KVTIER_LOOKUP_INDEX, &matched) == KVTIER_OK);
  CHECK(matched == 4);
  CHECK(kvtier_lookup_flags(c, "c-abi/nf4", keys, n, KVTIER_LOOKUP_INDEX | KVTIER_LOOKUP_DAEMON,
                            &matched) == 1);

  kvtier_lease* lease = NULL;
  CHECK(kvtier_get(c, "c-abi/nf4", keys, 2, &lease) == KVTIER_OK);
  CHECK(kvtier_lease_blocks(lease) == 2);
  CHECK(kvtier_lease_block_status(lease, 0) == KVTIER_OK);
  CHECK(kvtier_lease_tensor_count(lease, 0) == 1);
  kvtier_tensor_view view;
  CHECK(kvtier_lease_tensor(lease, 0, 0, &view) == KVTIER_OK);
  CHECK(strcmp(view.name, "v") == 0);
  CHECK(view.codec == KVTIER_CODEC_NF4);
  CHECK(view.rank == 2 && view.shape[0] == 16 && view.shape[1] == 128);
  static float back[16 * 128];
  CHECK(kvtier_lease_tensor_decode(lease, 0, 0, KVTIER_F32, back, sizeof(back)) == KVTIER_OK);
  double err = 0;
  for (int i = 0; i < 16 * 128; ++i)
    err += back[i] > values[i] ? back[i] - values[i] : values[i] - back[i];
  CHECK(err / (16 * 128) < 0.1);
  CHECK(kvtier_lease_tensor_decode(lease, 0, 0, KVTIER_F32, back, 8) != KVTIER_OK);
  CHECK(strlen(kvtier_last_error()) > 0);
  CHECK(kvtier_lease_release(lease) == KVTIER_OK);
  /* The release waits for the next request; sent now, one-way.  A second flush has nothing. */
  CHECK(kvtier_flush_releases(c) == KVTIER_OK);
  CHECK(kvtier_flush_releases(c) == KVTIER_OK);

  /* The codec on caller buffers. */
  uint64_t enc_size = kvtier_nf4_encoded_size(KVTIER_F32, KVTIER_NF4_COLUMN_BLOCKS, 0, 16, 128);
  CHECK(enc_size > 0);
  void* enc = malloc(enc_size);
  CHECK(kvtier_nf4_quantize(KVTIER_F32, KVTIER_NF4_COLUMN_BLOCKS, 0, 16, 128, values,
                            sizeof(values), enc, enc_size) == KVTIER_OK);
  CHECK(kvtier_nf4_dequantize(enc, enc_size, KVTIER_F32, back, sizeof(back)) == KVTIER_OK);
  free(enc);

  char* json = NULL;
  CHECK(kvtier_stats_json(c, &json) == KVTIER_OK);
  CHECK(strstr(json, "\"host\"") != NULL);
  kvtier_free(json);

  uint32_t removed = 0;
  /* Pins: all or nothing; unpin counts what was pinned; remove takes pinned blocks too. */
  uint32_t pinned = 0, unpinned = 0;
  CHECK(kvtier_pin(c, "c-abi/nf4", keys, 2, 0, -1, &pinned) == KVTIER_OK);
  CHECK(pinned == 2);
  kvtier_key missing = keys[0];
  missing.lo ^= 1;
  CHECK(kvtier_pin(c, "c-abi/nf4", &missing, 1, 1000, -1, &pinned) == KVTIER_E_NOT_FOUND);
  CHECK(kvtier_unpin(c, "c-abi/nf4", keys, 1, &unpinned) == KVTIER_OK);
  CHECK(unpinned == 1);
  CHECK(kvtier_unpin(c, "c-abi/nf4", keys, 1, &unpinned) == KVTIER_OK);
  CHECK(unpinned == 0);
  CHECK(kvtier_remove(c, "c-abi/nf4", keys, n, &removed) == KVTIER_OK);
  CHECK(removed == 4);
  kvtier_disconnect(c);

  /* The GPU tier (the test daemon runs its host emulation: device memory is host memory). */
  kvtier_client* g = NULL;
  CHECK(kvtier_connect_device(NULL, 0, &g) == KVTIER_OK);
  static uint16_t half[16 * 128];
  for (int i = 0; i < 16 * 128; ++i) half[i] = (uint16_t)(0x3c00 + (i % 512)); /* finite fp16 */
  kvtier_tensor_in h = {"k", KVTIER_F16, 2, shape, half, KVTIER_NF4_ROW_BLOCKS};
  CHECK(kvtier_put(g, "c-abi/gpu", keys[0], &h, 1) == KVTIER_OK);
  CHECK(kvtier_get_gpu(g, "c-abi/gpu", keys, 1, -1, &lease) == KVTIER_OK);
  CHECK(kvtier_lease_block_device(lease, 0) == 0);
  CHECK(kvtier_lease_tensor(lease, 0, 0, &view) == KVTIER_OK);
  CHECK(view.codec == KVTIER_CODEC_RAW && view.bytes == sizeof(half));
  CHECK(memcmp(view.data, half, sizeof(half)) == 0);
  CHECK(kvtier_lease_release(lease) == KVTIER_OK);
  /* Async: answered once queued; kvtier_lease_wait before reading (a no-op on the emulation). */
  CHECK(kvtier_get_gpu_async(g, "c-abi/gpu", keys, 1, -1, &lease) == KVTIER_OK);
  CHECK(kvtier_lease_wait(lease, NULL) == KVTIER_OK);
  CHECK(kvtier_lease_tensor(lease, 0, 0, &view) == KVTIER_OK);
  CHECK(memcmp(view.data, half, sizeof(half)) == 0);
  CHECK(kvtier_lease_release(lease) == KVTIER_OK);
  CHECK(kvtier_get_gpu(g, "c-abi/gpu", keys, 1, 7, &lease) != KVTIER_OK); /* no pool on 7 */
  CHECK(strstr(kvtier_last_error(), "device 7") != NULL);
  kvtier_disconnect(g);
  printf("c abi smoke: ok\n");
  return 0;
}
