/* The client protocol codec (Protocol/CLIENT.md); see wire.h. */
#include "wire.h"

#include <errno.h>
#include <string.h>

/* MARK: reading */

struct rd {
	const uint8_t *p;
	size_t len, pos;
	int bad;
};

static uint64_t rd_uint(struct rd *r, size_t n)
{
	uint64_t v = 0;
	if (r->bad || r->len - r->pos < n) {
		r->bad = 1;
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		v = (v << 8) | r->p[r->pos + i];
	r->pos += n;
	return v;
}

static uint8_t rd_u8(struct rd *r) { return (uint8_t)rd_uint(r, 1); }
static uint16_t rd_u16(struct rd *r) { return (uint16_t)rd_uint(r, 2); }
static uint32_t rd_u32(struct rd *r) { return (uint32_t)rd_uint(r, 4); }
static uint64_t rd_u64(struct rd *r) { return rd_uint(r, 8); }
static int32_t rd_i32(struct rd *r) { return (int32_t)rd_u32(r); }

static const uint8_t *rd_bytes(struct rd *r, size_t n)
{
	const uint8_t *p;
	if (r->bad || r->len - r->pos < n) {
		r->bad = 1;
		return NULL;
	}
	p = r->p + r->pos;
	r->pos += n;
	return p;
}

/* bytes8 of at most `max` bytes (and at least `min`). */
static const uint8_t *rd_bytes8(struct rd *r, uint8_t *len, unsigned min, unsigned max)
{
	uint8_t n = rd_u8(r);
	if (!r->bad && (n < min || n > max))
		r->bad = 1;
	*len = n;
	return rd_bytes(r, n);
}

static const uint8_t *rd_string16(struct rd *r, uint16_t *len)
{
	uint16_t n = rd_u16(r);
	const uint8_t *p = rd_bytes(r, n);
	if (!r->bad && !dlmw_valid_utf8(p, n))
		r->bad = 1;
	*len = n;
	return p;
}

static uint8_t rd_mode(struct rd *r, int allow_none)
{
	uint8_t mode = rd_u8(r);
	if (mode > 5 && !(allow_none && mode == DLMW_MODE_NONE))
		r->bad = 1;
	return mode;
}

int dlmw_valid_utf8(const uint8_t *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		uint8_t c = s[i];
		size_t n;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			n = 1;
			cp = c & 0x1F;
			min = 0x80;
		} else if ((c & 0xF0) == 0xE0) {
			n = 2;
			cp = c & 0x0F;
			min = 0x800;
		} else if ((c & 0xF8) == 0xF0) {
			n = 3;
			cp = c & 0x07;
			min = 0x10000;
		} else {
			return 0;
		}
		if (len - i - 1 < n)
			return 0;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xC0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return 0;
		i += n + 1;
	}
	return 1;
}

int dlmw_split(const uint8_t *buf, size_t len, uint32_t max, size_t *frame_len)
{
	uint32_t length;
	if (len < 4)
		return 0;
	length = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
	if (length == 0)
		return -EPROTO;
	if (length > max)
		return -EMSGSIZE;
	if (len - 4 < length)
		return 0;
	*frame_len = (size_t)length + 4;
	return 1;
}

static void decode_client(uint8_t type, struct rd *r, struct dlmw_msg *m)
{
	switch (type) {
	case DLMW_HELLO:
		m->u.hello.magic = rd_u32(r);
		if (m->u.hello.magic != DLMW_MAGIC)
			r->bad = 1;
		m->u.hello.min_version = rd_u16(r);
		m->u.hello.max_version = rd_u16(r);
		m->u.hello.pid = rd_u32(r);
		m->u.hello.name = rd_string16(r, &m->u.hello.name_len);
		break;
	case DLMW_PING:
	case DLMW_BYE:
		m->tag = rd_u32(r);
		break;
	case DLMW_LOCKSPACE_OPEN:
		m->tag = rd_u32(r);
		m->u.ls_open.flags = rd_u8(r);
		if (m->u.ls_open.flags & ~1u)
			r->bad = 1;
		m->u.ls_open.lvb_length = rd_u8(r);
		m->u.ls_open.mode = rd_u16(r);
		if (m->u.ls_open.mode & ~0777u)
			r->bad = 1;
		m->u.ls_open.name = rd_bytes8(r, &m->u.ls_open.name_len, 1, DLMW_MAX_NAME);
		break;
	case DLMW_LOCKSPACE_RELEASE:
		m->tag = rd_u32(r);
		m->u.ls_release.lockspace = rd_u32(r);
		m->u.ls_release.force = rd_u8(r);
		if (m->u.ls_release.force > 1)
			r->bad = 1;
		break;
	case DLMW_PURGE:
		m->tag = rd_u32(r);
		m->u.purge.lockspace = rd_u32(r);
		m->u.purge.node_id = rd_u32(r);
		m->u.purge.pid = rd_u32(r);
		break;
	case DLMW_FENCE_ACK:
		m->tag = rd_u32(r);
		m->u.fence_ack.node_id = rd_u32(r);
		break;
	case DLMW_LOCK:
		m->tag = rd_u32(r);
		m->u.lock.lockspace = rd_u32(r);
		m->u.lock.flags = rd_u32(r);
		m->u.lock.mode = rd_mode(r, 0);
		m->u.lock.options = rd_u8(r);
		if (m->u.lock.options & ~(DLMW_OPT_BLOCKING | DLMW_OPT_TOKEN))
			r->bad = 1;
		m->u.lock.priority = rd_u8(r);
		m->u.lock.parent = rd_u32(r);
		m->u.lock.timeout_ns = rd_u64(r);
		m->u.lock.xid = rd_u64(r);
		m->u.lock.name = rd_bytes8(r, &m->u.lock.name_len, 1, DLMW_MAX_NAME);
		break;
	case DLMW_CONVERT:
		m->tag = rd_u32(r);
		m->u.convert.lock = rd_u32(r);
		m->u.convert.flags = rd_u32(r);
		m->u.convert.mode = rd_mode(r, 0);
		m->u.convert.priority = rd_u8(r);
		m->u.convert.timeout_ns = rd_u64(r);
		m->u.convert.lvb = rd_bytes8(r, &m->u.convert.lvb_len, 0, DLMW_MAX_LVB);
		break;
	case DLMW_UNLOCK:
		m->tag = rd_u32(r);
		m->u.unlock.lock = rd_u32(r);
		m->u.unlock.flags = rd_u32(r);
		m->u.unlock.lvb = rd_bytes8(r, &m->u.unlock.lvb_len, 0, DLMW_MAX_LVB);
		break;
	case DLMW_DEADLOCK_CANCEL:
		m->tag = rd_u32(r);
		m->u.deadlock_cancel.lock = rd_u32(r);
		break;
	case DLMW_QUERY:
		m->tag = rd_u32(r);
		m->u.query.kind = rd_u8(r);
		if (m->u.query.kind < DLMW_QUERY_STATUS || m->u.query.kind > DLMW_QUERY_CONFIG)
			r->bad = 1;
		if (m->u.query.kind == DLMW_QUERY_LOCKDEBUG_PAGE || m->u.query.kind == DLMW_QUERY_LOCKDUMP_PAGE)
			/* a cursor of 8 bytes, then a name */
			m->u.query.arg = rd_bytes8(r, &m->u.query.arg_len, 9, 8 + DLMW_MAX_NAME);
		else
			m->u.query.arg = rd_bytes8(r, &m->u.query.arg_len, 0, DLMW_MAX_NAME);
		break;
	default:
		r->bad = 1;
	}
}

static void decode_server(uint8_t type, struct rd *r, struct dlmw_msg *m)
{
	switch (type) {
	case DLMW_HELLO_REPLY:
		m->u.hello_reply.version = rd_u16(r);
		m->u.hello_reply.node_id = rd_u32(r);
		m->u.hello_reply.max_name = rd_u8(r);
		m->u.hello_reply.max_lvb = rd_u8(r);
		m->u.hello_reply.server = rd_string16(r, &m->u.hello_reply.server_len);
		break;
	case DLMW_PONG:
		m->tag = rd_u32(r);
		break;
	case DLMW_LOCKSPACE:
		m->tag = rd_u32(r);
		m->u.lockspace.lockspace = rd_u32(r);
		m->u.lockspace.lvb_length = rd_u8(r);
		m->u.lockspace.created = rd_u8(r);
		if (m->u.lockspace.created > 1)
			r->bad = 1;
		break;
	case DLMW_PURGED:
		m->tag = rd_u32(r);
		m->u.purged.count = rd_u32(r);
		break;
	case DLMW_OK:
		m->tag = rd_u32(r);
		m->u.ok.lock = rd_u32(r);
		break;
	case DLMW_ERROR:
		m->tag = rd_u32(r);
		m->u.error.status = rd_i32(r);
		m->u.error.message = rd_string16(r, &m->u.error.message_len);
		break;
	case DLMW_COMPLETION:
		m->tag = rd_u32(r);
		m->u.completion.lock = rd_u32(r);
		m->u.completion.status = rd_i32(r);
		m->u.completion.sb_flags = rd_u8(r);
		m->u.completion.mode = rd_mode(r, 1);
		m->u.completion.lvb_sequence = rd_u64(r);
		m->u.completion.fencing_token = rd_u64(r);
		m->u.completion.lvb = rd_bytes8(r, &m->u.completion.lvb_len, 0, DLMW_MAX_LVB);
		break;
	case DLMW_BLOCKING:
		m->u.blocking.lock = rd_u32(r);
		m->u.blocking.mode = rd_mode(r, 0);
		break;
	case DLMW_QUERY_REPLY:
		m->tag = rd_u32(r);
		m->u.query_reply.json_len = rd_u32(r);
		m->u.query_reply.json = rd_bytes(r, m->u.query_reply.json_len);
		break;
	case DLMW_GOODBYE:
		m->u.goodbye.reason = rd_string16(r, &m->u.goodbye.reason_len);
		break;
	default:
		r->bad = 1;
	}
}

int dlmw_decode(enum dlmw_direction direction, const uint8_t *frame, size_t frame_len, struct dlmw_msg *m)
{
	struct rd r;
	size_t frame_max = direction == DLMW_FROM_CLIENT ? DLMW_MAX_CLIENT_FRAME : DLMW_MAX_SERVER_FRAME;
	size_t length;

	memset(m, 0, sizeof(*m));
	if (frame_len < 5)
		return -EPROTO;
	length = (size_t)frame[0] << 24 | (size_t)frame[1] << 16 | (size_t)frame[2] << 8 | frame[3];
	if (length != frame_len - 4)
		return -EPROTO;
	if (length > frame_max)
		return -EMSGSIZE;
	m->type = frame[4];
	r.p = frame + 5;
	r.len = frame_len - 5;
	r.pos = 0;
	r.bad = 0;
	if (direction == DLMW_FROM_CLIENT)
		decode_client(m->type, &r, m);
	else
		decode_server(m->type, &r, m);
	if (r.bad || r.pos != r.len)
		return -EPROTO;
	return 0;
}

/* MARK: writing */

struct wr {
	uint8_t *p; /* NULL: only count */
	size_t pos;
	int bad;
};

static void wr_uint(struct wr *w, uint64_t v, size_t n)
{
	if (w->p)
		for (size_t i = 0; i < n; i++)
			w->p[w->pos + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	w->pos += n;
}

static void wr_u8(struct wr *w, uint8_t v) { wr_uint(w, v, 1); }
static void wr_u16(struct wr *w, uint16_t v) { wr_uint(w, v, 2); }
static void wr_u32(struct wr *w, uint32_t v) { wr_uint(w, v, 4); }
static void wr_u64(struct wr *w, uint64_t v) { wr_uint(w, v, 8); }

static void wr_bytes(struct wr *w, const uint8_t *b, size_t n)
{
	if (n && !b) {
		w->bad = 1;
		return;
	}
	if (w->p && n)
		memcpy(w->p + w->pos, b, n);
	w->pos += n;
}

static void wr_bytes8(struct wr *w, const uint8_t *b, size_t n)
{
	wr_u8(w, (uint8_t)n);
	wr_bytes(w, b, n);
}

static void wr_string16(struct wr *w, const uint8_t *b, size_t n)
{
	wr_u16(w, (uint16_t)n);
	wr_bytes(w, b, n);
}

static void encode_body(const struct dlmw_msg *m, struct wr *w)
{
	switch (m->type) {
	case DLMW_HELLO:
		wr_u32(w, m->u.hello.magic);
		wr_u16(w, m->u.hello.min_version);
		wr_u16(w, m->u.hello.max_version);
		wr_u32(w, m->u.hello.pid);
		wr_string16(w, m->u.hello.name, m->u.hello.name_len);
		break;
	case DLMW_PING:
	case DLMW_BYE:
	case DLMW_PONG:
		wr_u32(w, m->tag);
		break;
	case DLMW_LOCKSPACE_OPEN:
		wr_u32(w, m->tag);
		wr_u8(w, m->u.ls_open.flags);
		wr_u8(w, m->u.ls_open.lvb_length);
		wr_u16(w, m->u.ls_open.mode);
		wr_bytes8(w, m->u.ls_open.name, m->u.ls_open.name_len);
		break;
	case DLMW_LOCKSPACE_RELEASE:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.ls_release.lockspace);
		wr_u8(w, m->u.ls_release.force);
		break;
	case DLMW_PURGE:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.purge.lockspace);
		wr_u32(w, m->u.purge.node_id);
		wr_u32(w, m->u.purge.pid);
		break;
	case DLMW_FENCE_ACK:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.fence_ack.node_id);
		break;
	case DLMW_LOCK:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.lock.lockspace);
		wr_u32(w, m->u.lock.flags);
		wr_u8(w, m->u.lock.mode);
		wr_u8(w, m->u.lock.options);
		wr_u8(w, m->u.lock.priority);
		wr_u32(w, m->u.lock.parent);
		wr_u64(w, m->u.lock.timeout_ns);
		wr_u64(w, m->u.lock.xid);
		wr_bytes8(w, m->u.lock.name, m->u.lock.name_len);
		break;
	case DLMW_CONVERT:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.convert.lock);
		wr_u32(w, m->u.convert.flags);
		wr_u8(w, m->u.convert.mode);
		wr_u8(w, m->u.convert.priority);
		wr_u64(w, m->u.convert.timeout_ns);
		wr_bytes8(w, m->u.convert.lvb, m->u.convert.lvb_len);
		break;
	case DLMW_UNLOCK:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.unlock.lock);
		wr_u32(w, m->u.unlock.flags);
		wr_bytes8(w, m->u.unlock.lvb, m->u.unlock.lvb_len);
		break;
	case DLMW_DEADLOCK_CANCEL:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.deadlock_cancel.lock);
		break;
	case DLMW_QUERY:
		wr_u32(w, m->tag);
		wr_u8(w, m->u.query.kind);
		wr_bytes8(w, m->u.query.arg, m->u.query.arg_len);
		break;
	case DLMW_HELLO_REPLY:
		wr_u16(w, m->u.hello_reply.version);
		wr_u32(w, m->u.hello_reply.node_id);
		wr_u8(w, m->u.hello_reply.max_name);
		wr_u8(w, m->u.hello_reply.max_lvb);
		wr_string16(w, m->u.hello_reply.server, m->u.hello_reply.server_len);
		break;
	case DLMW_LOCKSPACE:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.lockspace.lockspace);
		wr_u8(w, m->u.lockspace.lvb_length);
		wr_u8(w, m->u.lockspace.created);
		break;
	case DLMW_PURGED:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.purged.count);
		break;
	case DLMW_OK:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.ok.lock);
		break;
	case DLMW_ERROR:
		wr_u32(w, m->tag);
		wr_u32(w, (uint32_t)m->u.error.status);
		wr_string16(w, m->u.error.message, m->u.error.message_len);
		break;
	case DLMW_COMPLETION:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.completion.lock);
		wr_u32(w, (uint32_t)m->u.completion.status);
		wr_u8(w, m->u.completion.sb_flags);
		wr_u8(w, m->u.completion.mode);
		wr_u64(w, m->u.completion.lvb_sequence);
		wr_u64(w, m->u.completion.fencing_token);
		wr_bytes8(w, m->u.completion.lvb, m->u.completion.lvb_len);
		break;
	case DLMW_BLOCKING:
		wr_u32(w, m->u.blocking.lock);
		wr_u8(w, m->u.blocking.mode);
		break;
	case DLMW_QUERY_REPLY:
		wr_u32(w, m->tag);
		wr_u32(w, m->u.query_reply.json_len);
		wr_bytes(w, m->u.query_reply.json, m->u.query_reply.json_len);
		break;
	case DLMW_GOODBYE:
		wr_string16(w, m->u.goodbye.reason, m->u.goodbye.reason_len);
		break;
	default:
		w->bad = 1;
	}
}

size_t dlmw_encoded_size(const struct dlmw_msg *m)
{
	struct wr w = {NULL, 5, 0};
	encode_body(m, &w);
	if (w.bad || w.pos - 4 > DLMW_MAX_SERVER_FRAME)
		return 0;
	return w.pos;
}

size_t dlmw_encode(const struct dlmw_msg *m, uint8_t *out)
{
	size_t size = dlmw_encoded_size(m);
	struct wr w = {out, 0, 0};
	if (size == 0)
		return 0;
	wr_u32(&w, (uint32_t)(size - 4));
	wr_u8(&w, m->type);
	encode_body(m, &w);
	return w.pos;
}
