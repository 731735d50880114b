/*
 * The client protocol of Protocol/CLIENT.md in C: frame splitting, decoding and encoding of every message
 * in both directions. Decoding is zero-copy: the byte fields of a decoded message point into the buffer
 * that was decoded. No function here allocates, blocks or keeps state.
 */
#ifndef CDLM_WIRE_H
#define CDLM_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Message types (CLIENT.md §4 and §5). */
enum {
	DLMW_HELLO = 0x01,
	DLMW_PING = 0x02,
	DLMW_BYE = 0x03,
	DLMW_LOCKSPACE_OPEN = 0x10,
	DLMW_LOCKSPACE_RELEASE = 0x11,
	DLMW_PURGE = 0x12,
	DLMW_FENCE_ACK = 0x13,
	DLMW_LOCK = 0x20,
	DLMW_CONVERT = 0x21,
	DLMW_UNLOCK = 0x22,
	DLMW_DEADLOCK_CANCEL = 0x23,
	DLMW_QUERY = 0x30,

	DLMW_HELLO_REPLY = 0x81,
	DLMW_PONG = 0x82,
	DLMW_LOCKSPACE = 0x90,
	DLMW_PURGED = 0x91,
	DLMW_OK = 0xA0,
	DLMW_ERROR = 0xA1,
	DLMW_COMPLETION = 0xA2,
	DLMW_BLOCKING = 0xA3,
	DLMW_QUERY_REPLY = 0xB0,
	DLMW_GOODBYE = 0xFE,
};

/* Who sent a frame: decides the message set and the length limit. */
enum dlmw_direction { DLMW_FROM_CLIENT = 0, DLMW_FROM_SERVER = 1 };

#define DLMW_MAGIC 0x444C4D50u /* "DLMP" */
#define DLMW_VERSION 2
#define DLMW_MAX_CLIENT_FRAME 1024u
#define DLMW_MAX_SERVER_FRAME (16u * 1024u * 1024u)
#define DLMW_MAX_NAME 64
#define DLMW_MAX_LVB 64
#define DLMW_MODE_NONE 255
/* The longest client frame, with its length field. */
#define DLMW_MAX_CLIENT_BYTES (DLMW_MAX_CLIENT_FRAME + 4u)

/* LOCK options (CLIENT.md §4). */
#define DLMW_OPT_BLOCKING 0x01
#define DLMW_OPT_TOKEN 0x02

/* QUERY kinds. */
enum {
	DLMW_QUERY_STATUS = 1,
	DLMW_QUERY_LOCKSPACES = 2,
	DLMW_QUERY_LOCKDEBUG = 3,
	DLMW_QUERY_LOCKDUMP = 4,
	DLMW_QUERY_LOCKDEBUG_PAGE = 5, /* argument: cursor:u64, then the lockspace name */
	DLMW_QUERY_LOCKDUMP_PAGE = 6,
	DLMW_QUERY_LOG = 7, /* dlmd's recent log lines (root only) */
	DLMW_QUERY_CONFIG = 8, /* the settings dlmd runs with (root only) */
};

/* One message of either direction. `tag` is 0 for the messages that carry none (HELLO, HELLO_REPLY,
 * BLOCKING, GOODBYE). Pointers refer to the decoded buffer, or to the caller's bytes when encoding. */
struct dlmw_msg {
	uint8_t type;
	uint32_t tag;
	union {
		struct {
			uint32_t magic;
			uint16_t min_version, max_version;
			uint32_t pid;
			const uint8_t *name;
			uint16_t name_len;
		} hello;
		struct {
			uint8_t flags; /* bit 0: create */
			uint8_t lvb_length;
			uint16_t mode; /* permission bits if it creates the lockspace */
			const uint8_t *name;
			uint8_t name_len;
		} ls_open;
		struct {
			uint32_t lockspace;
			uint8_t force;
		} ls_release;
		struct {
			uint32_t lockspace;
			uint32_t node_id;
			uint32_t pid;
		} purge;
		struct {
			uint32_t node_id;
		} fence_ack;
		struct {
			uint32_t lockspace;
			uint32_t flags;
			uint8_t mode, options, priority;
			uint32_t parent;
			uint64_t timeout_ns, xid;
			const uint8_t *name;
			uint8_t name_len;
		} lock;
		struct {
			uint32_t lock;
			uint32_t flags;
			uint8_t mode, priority;
			uint64_t timeout_ns;
			const uint8_t *lvb;
			uint8_t lvb_len;
		} convert;
		struct {
			uint32_t lock;
			uint32_t flags;
			const uint8_t *lvb;
			uint8_t lvb_len;
		} unlock;
		struct {
			uint32_t lock;
		} deadlock_cancel;
		struct {
			uint8_t kind;
			const uint8_t *arg;
			uint8_t arg_len;
		} query;
		struct {
			uint16_t version;
			uint32_t node_id;
			uint8_t max_name, max_lvb;
			const uint8_t *server;
			uint16_t server_len;
		} hello_reply;
		struct {
			uint32_t lockspace;
			uint8_t lvb_length, created;
		} lockspace;
		struct {
			uint32_t count;
		} purged;
		struct {
			uint32_t lock;
		} ok;
		struct {
			int32_t status;
			const uint8_t *message;
			uint16_t message_len;
		} error;
		struct {
			uint32_t lock;
			int32_t status;
			uint8_t sb_flags, mode;
			uint64_t lvb_sequence, fencing_token;
			const uint8_t *lvb;
			uint8_t lvb_len;
		} completion;
		struct {
			uint32_t lock;
			uint8_t mode;
		} blocking;
		struct {
			const uint8_t *json;
			uint32_t json_len;
		} query_reply;
		struct {
			const uint8_t *reason;
			uint16_t reason_len;
		} goodbye;
	} u;
};

/*
 * Looks for one frame at the start of `buf` (`len` bytes). Returns 1 with *frame_len (the length field's 4
 * bytes included) when a whole frame is there, 0 when more bytes are needed, or a negative errno when the
 * length is refused: -EPROTO for 0, -EMSGSIZE above `max`. The length is judged on its 4 bytes alone.
 */
int dlmw_split(const uint8_t *buf, size_t len, uint32_t max, size_t *frame_len);

/*
 * Decodes one whole frame (as dlmw_split delimits it) sent in `direction`. Returns 0, or -EPROTO when the
 * frame is malformed (CLIENT.md §9): unknown type, short or long body, bad magic, mode, name, value block,
 * string, option bits, force, kind or created.
 */
int dlmw_decode(enum dlmw_direction direction, const uint8_t *frame, size_t frame_len, struct dlmw_msg *m);

/* The number of bytes dlmw_encode writes for `m`, its length field included; 0 if `m` has an unknown type
 * or a field too long for its length prefix. */
size_t dlmw_encoded_size(const struct dlmw_msg *m);

/* Writes `m` as one frame at `out` (dlmw_encoded_size(m) bytes) and returns the byte count, 0 as above. */
size_t dlmw_encode(const struct dlmw_msg *m, uint8_t *out);

/* Whether `len` bytes at `s` are well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF). */
int dlmw_valid_utf8(const uint8_t *s, size_t len);

#endif
