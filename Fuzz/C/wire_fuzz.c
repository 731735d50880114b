/*
 * The C library's decoder (Sources/CDLM/wire.c) under libFuzzer and AddressSanitizer: the input's first byte
 * picks the direction, the rest is a byte stream split into frames as the library splits what dlmd sends. Every
 * frame that decodes must encode to the same bytes (each field is kept as read), and nothing may read or write
 * out of bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum dlmw_direction direction;
	size_t offset = 1;
	if (size < 1)
		return 0;
	direction = (data[0] & 1) ? DLMW_FROM_SERVER : DLMW_FROM_CLIENT;
	while (offset < size) {
		size_t frame_len = 0;
		struct dlmw_msg m;
		uint8_t *copy;
		size_t n;
		uint32_t max = direction == DLMW_FROM_CLIENT ? DLMW_MAX_CLIENT_FRAME : (16u << 20);
		if (dlmw_split(data + offset, size - offset, max, &frame_len) != 1)
			return 0;
		/* The frame alone, in its own allocation, so that ASan sees any read past it. */
		copy = malloc(frame_len);
		memcpy(copy, data + offset, frame_len);
		memset(&m, 0, sizeof(m));
		if (dlmw_decode(direction, copy, frame_len, &m) == 0) {
			uint8_t *again;
			n = dlmw_encoded_size(&m);
			if (n != frame_len)
				abort();
			again = malloc(n);
			if (dlmw_encode(&m, again) != n || memcmp(again, copy, n) != 0)
				abort();
			free(again);
		}
		free(copy);
		offset += frame_len;
	}
	return 0;
}
