/*
 * Bad input from the daemon never crashes the library: a fake dlmd (a thread here, on a socket of its own)
 * answers HELLO and LOCKSPACE_OPEN properly, then misbehaves in a chosen way; the library's calls must fail
 * with an errno (EPROTO, EMSGSIZE, ESHUTDOWN, ENOTCONN...) and later calls too, never hang or crash. A last
 * case throws random frames and bytes at it, seed after seed.
 */
#include "harness.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "../../Sources/CDLM/wire.h"

static int listen_fd = -1;
static char sock_path[108];

/* MARK: the fake server's side */

struct conn {
	int fd;
	uint8_t buf[8192];
	size_t len;
	uint32_t last_tag;
	uint8_t last_type;
	uint32_t last_lockspace;
};

/* Reads one client frame; 0 at the end of the stream. */
static int srv_read(struct conn *c, struct dlmw_msg *m)
{
	for (;;) {
		size_t frame_len;
		int r = dlmw_split(c->buf, c->len, DLMW_MAX_CLIENT_FRAME, &frame_len);
		ssize_t n;
		if (r == 1) {
			uint8_t frame[DLMW_MAX_CLIENT_BYTES];
			memcpy(frame, c->buf, frame_len);
			memmove(c->buf, c->buf + frame_len, c->len - frame_len);
			c->len -= frame_len;
			if (dlmw_decode(DLMW_FROM_CLIENT, frame, frame_len, m))
				return -1;
			/* The byte fields point into `frame`, gone after return: callers use the numbers only. */
			c->last_tag = m->tag;
			c->last_type = m->type;
			return 1;
		}
		if (r < 0)
			return -1;
		n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
		if (n <= 0)
			return 0;
		c->len += (size_t)n;
	}
}

static void srv_raw(struct conn *c, const void *p, size_t len)
{
	const uint8_t *b = p;
	while (len > 0) {
		ssize_t n = send(c->fd, b, len, MSG_NOSIGNAL);
		if (n <= 0)
			return;
		b += n;
		len -= (size_t)n;
	}
}

static void srv_send(struct conn *c, const struct dlmw_msg *m)
{
	uint8_t out[4096];
	size_t n = dlmw_encode(m, out);
	srv_raw(c, out, n);
}

/* HELLO, then LOCKSPACE_OPEN: answered properly. */
static int srv_handshake(struct conn *c)
{
	struct dlmw_msg m;
	if (srv_read(c, &m) != 1 || m.type != DLMW_HELLO)
		return -1;
	memset(&m, 0, sizeof(m));
	m.type = DLMW_HELLO_REPLY;
	m.u.hello_reply.version = DLMW_VERSION;
	m.u.hello_reply.node_id = 1;
	m.u.hello_reply.max_name = 64;
	m.u.hello_reply.max_lvb = 64;
	m.u.hello_reply.server = (const uint8_t *)"fake";
	m.u.hello_reply.server_len = 4;
	srv_send(c, &m);
	if (srv_read(c, &m) != 1 || m.type != DLMW_LOCKSPACE_OPEN)
		return -1;
	memset(&m, 0, sizeof(m));
	m.type = DLMW_LOCKSPACE;
	m.tag = c->last_tag;
	m.u.lockspace.lockspace = 3;
	m.u.lockspace.lvb_length = 32;
	m.u.lockspace.created = 1;
	srv_send(c, &m);
	return 0;
}

static void completion(struct dlmw_msg *m, uint32_t tag, uint32_t lock, int32_t status, uint8_t mode)
{
	memset(m, 0, sizeof(*m));
	m->type = DLMW_COMPLETION;
	m->tag = tag;
	m->u.completion.lock = lock;
	m->u.completion.status = status;
	m->u.completion.mode = mode;
}

/* The misbehaviours, after the handshake and one request from the client. */
enum bad {
	BAD_CLOSE,	       /* closes the connection */
	BAD_MODE,	       /* COMPLETION with mode 6 */
	BAD_LENGTH,	       /* a frame over 16 MiB */
	BAD_LENGTH_ZERO,       /* a frame of length 0 */
	BAD_TAG,	       /* a reply with a tag that was never used */
	BAD_REPLY_KIND,	       /* LOCKSPACE in answer to LOCK */
	BAD_GOODBYE,	       /* GOODBYE */
	BAD_ERROR_TAG0,	       /* ERROR with tag 0 (a refused frame) */
	BAD_UTF8,	       /* ERROR whose message is not UTF-8 */
	BAD_TRUNCATED,	       /* a COMPLETION cut short, then the end of the stream */
	BAD_UNKNOWN_LOCK,      /* events for locks that do not exist, then a good answer */
	BAD_DUPLICATE_LOCK_ID, /* two locks answered with the same daemon id */
	BAD_HELLO,	       /* a wrong answer to HELLO */
	BAD_HELLO_VERSION,     /* HELLO_REPLY with a version the library does not speak */
	BAD_FUZZ,	       /* random frames and bytes */
	BAD_COUNT
};

struct serve_arg {
	enum bad bad;
	unsigned seed;
};

static uint32_t rnd(unsigned *seed)
{
	*seed = *seed * 1103515245u + 12345u;
	return (*seed >> 8) & 0xffffff;
}

static void fuzz(struct conn *c, unsigned seed)
{
	static const uint8_t types[] = {DLMW_HELLO_REPLY, DLMW_PONG,	DLMW_LOCKSPACE, DLMW_OK,     DLMW_ERROR,
					DLMW_COMPLETION,  DLMW_BLOCKING, DLMW_QUERY_REPLY, DLMW_GOODBYE, 0x00,
					0xff};
	int frames = 1 + (int)(rnd(&seed) % 6);
	for (int f = 0; f < frames; f++) {
		uint8_t frame[128];
		uint32_t body = rnd(&seed) % 60, kind = rnd(&seed) % 4;
		if (kind == 0) {
			/* Pure noise. */
			for (uint32_t i = 0; i < body + 4; i++)
				frame[i] = (uint8_t)rnd(&seed);
			srv_raw(c, frame, body + 4);
			continue;
		}
		frame[0] = frame[1] = 0;
		frame[2] = (uint8_t)((body + 1) >> 8);
		frame[3] = (uint8_t)(body + 1);
		frame[4] = types[rnd(&seed) % sizeof(types)];
		for (uint32_t i = 0; i < body; i++)
			frame[5 + i] = (uint8_t)(kind == 1 ? rnd(&seed) : rnd(&seed) % 3);
		/* Often a plausible tag: the client's last one, or 0. */
		if (body >= 4 && kind == 3) {
			frame[5] = (uint8_t)(c->last_tag >> 24);
			frame[6] = (uint8_t)(c->last_tag >> 16);
			frame[7] = (uint8_t)(c->last_tag >> 8);
			frame[8] = (uint8_t)c->last_tag;
		}
		srv_raw(c, frame, body + 5);
	}
}

static void *serve(void *argp)
{
	struct serve_arg *arg = argp;
	struct conn *c = calloc(1, sizeof(*c));
	struct dlmw_msg m;
	c->fd = accept(listen_fd, NULL, NULL);
	if (c->fd < 0)
		goto out;
	if (arg->bad == BAD_HELLO || arg->bad == BAD_HELLO_VERSION) {
		if (srv_read(c, &m) == 1) {
			memset(&m, 0, sizeof(m));
			if (arg->bad == BAD_HELLO) {
				m.type = DLMW_PONG;
				m.tag = 1;
			} else {
				m.type = DLMW_HELLO_REPLY;
				m.u.hello_reply.version = DLMW_VERSION + 1;
			}
			srv_send(c, &m);
		}
		goto out;
	}
	if (srv_handshake(c))
		goto out;
	if (srv_read(c, &m) != 1)
		goto out;
	switch (arg->bad) {
	case BAD_CLOSE:
		break;
	case BAD_MODE:
		completion(&m, c->last_tag, 1, 0, 6);
		srv_send(c, &m);
		break;
	case BAD_LENGTH: {
		uint8_t big[9] = {0x01, 0x00, 0x00, 0x01, DLMW_QUERY_REPLY, 0, 0, 0, 1};
		srv_raw(c, big, sizeof(big));
		/* ... and keeps the connection open: the library must not wait for 16 MiB. */
		srv_read(c, &m);
		break;
	}
	case BAD_LENGTH_ZERO: {
		uint8_t zero[4] = {0, 0, 0, 0};
		srv_raw(c, zero, sizeof(zero));
		srv_read(c, &m);
		break;
	}
	case BAD_TAG:
		completion(&m, c->last_tag + 1000, 1, 0, 5);
		srv_send(c, &m);
		srv_read(c, &m);
		break;
	case BAD_REPLY_KIND:
		memset(&m, 0, sizeof(m));
		m.type = DLMW_LOCKSPACE;
		m.tag = c->last_tag;
		m.u.lockspace.lockspace = 1;
		srv_send(c, &m);
		srv_read(c, &m);
		break;
	case BAD_GOODBYE:
		memset(&m, 0, sizeof(m));
		m.type = DLMW_GOODBYE;
		m.u.goodbye.reason = (const uint8_t *)"bye";
		m.u.goodbye.reason_len = 3;
		srv_send(c, &m);
		srv_read(c, &m);
		break;
	case BAD_ERROR_TAG0:
	case BAD_UTF8: {
		uint8_t msg[2] = {0xc3, 0x28};
		memset(&m, 0, sizeof(m));
		m.type = DLMW_ERROR;
		m.tag = arg->bad == BAD_ERROR_TAG0 ? 0 : c->last_tag;
		m.u.error.status = EPROTO;
		m.u.error.message = arg->bad == BAD_UTF8 ? msg : (const uint8_t *)"no";
		m.u.error.message_len = 2;
		srv_send(c, &m);
		srv_read(c, &m);
		break;
	}
	case BAD_TRUNCATED: {
		uint8_t out[64];
		size_t n;
		completion(&m, c->last_tag, 1, 0, 5);
		n = dlmw_encode(&m, out);
		srv_raw(c, out, n - 3);
		break;
	}
	case BAD_UNKNOWN_LOCK: {
		uint32_t tag = c->last_tag;
		completion(&m, 0, 999, 0, 5);
		srv_send(c, &m);
		memset(&m, 0, sizeof(m));
		m.type = DLMW_BLOCKING;
		m.u.blocking.lock = 998;
		m.u.blocking.mode = 3;
		srv_send(c, &m);
		completion(&m, tag, 1, 0, 5);
		srv_send(c, &m);
		/* The unlock, answered properly too. */
		if (srv_read(c, &m) == 1 && m.type == DLMW_UNLOCK) {
			completion(&m, c->last_tag, 1, EUNLOCK, 255);
			srv_send(c, &m);
		}
		srv_read(c, &m);
		break;
	}
	case BAD_DUPLICATE_LOCK_ID: {
		completion(&m, c->last_tag, 7, 0, 5);
		srv_send(c, &m);
		if (srv_read(c, &m) == 1) {
			completion(&m, c->last_tag, 7, 0, 5);
			srv_send(c, &m);
		}
		srv_read(c, &m);
		break;
	}
	case BAD_FUZZ:
		fuzz(c, arg->seed);
		break;
	default:
		break;
	}
out:
	if (c->fd >= 0)
		close(c->fd);
	free(c);
	return NULL;
}

/* MARK: the client's side */

static pthread_t server;
static struct serve_arg server_arg;

static void start_server(enum bad bad, unsigned seed)
{
	server_arg.bad = bad;
	server_arg.seed = seed;
	pthread_create(&server, NULL, serve, &server_arg);
}

static void case_bad(enum bad bad, int expect_errno)
{
	dlm_lshandle_t ls;
	struct dlm_lksb lksb;
	int rc, err;
	start_server(bad, 0);
	ls = dlm_create_lockspace("robust", 0600);
	if (bad == BAD_HELLO || bad == BAD_HELLO_VERSION) {
		err = errno;
		CHECK(ls == NULL);
		CHECK_EQ(err, expect_errno);
		pthread_join(server, NULL);
		return;
	}
	CHECK(ls != NULL);
	if (!ls) {
		pthread_join(server, NULL);
		return;
	}
	memset(&lksb, 0, sizeof(lksb));
	rc = dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, 0, "r", 1, 0, NULL, NULL, NULL);
	err = errno;
	if (bad == BAD_UNKNOWN_LOCK) {
		CHECK_EQ(rc, 0);
		CHECK_EQ(lksb.sb_status, 0);
		CHECK_OK(dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb));
		CHECK_EQ(lksb.sb_status, EUNLOCK);
	} else if (bad == BAD_DUPLICATE_LOCK_ID) {
		struct dlm_lksb second;
		CHECK_EQ(rc, 0);
		memset(&second, 0, sizeof(second));
		rc = dlm_ls_lock_wait(ls, LKM_EXMODE, &second, 0, "s", 1, 0, NULL, NULL, NULL);
		CHECK_EQ(rc, -1);
		CHECK_EQ(errno, EPROTO);
	} else {
		CHECK_EQ(rc, -1);
		CHECK_EQ(err, expect_errno);
		/* The connection stays dead: later calls fail at once. */
		errno = 0;
		CHECK(dlm_ls_lock(ls, LKM_EXMODE, &lksb, 0, "r", 1, 0, NULL, NULL, NULL, NULL) == -1 && errno != 0);
	}
	dlm_close_lockspace(ls);
	pthread_join(server, NULL);
}

#define BAD_CASE(fn, bad, e)        \
	static void fn(void)        \
	{                           \
		case_bad((bad), (e)); \
	}
BAD_CASE(test_closed, BAD_CLOSE, ENOTCONN)
BAD_CASE(test_mode6, BAD_MODE, EPROTO)
BAD_CASE(test_length_over_16m, BAD_LENGTH, EMSGSIZE)
BAD_CASE(test_length_zero, BAD_LENGTH_ZERO, EPROTO)
BAD_CASE(test_unknown_tag, BAD_TAG, EPROTO)
BAD_CASE(test_wrong_reply, BAD_REPLY_KIND, EPROTO)
BAD_CASE(test_goodbye, BAD_GOODBYE, ESHUTDOWN)
BAD_CASE(test_error_tag0, BAD_ERROR_TAG0, EPROTO)
BAD_CASE(test_not_utf8, BAD_UTF8, EPROTO)
BAD_CASE(test_truncated, BAD_TRUNCATED, EPROTO)
BAD_CASE(test_unknown_lock, BAD_UNKNOWN_LOCK, 0)
BAD_CASE(test_duplicate_lock_id, BAD_DUPLICATE_LOCK_ID, EPROTO)
BAD_CASE(test_bad_hello, BAD_HELLO, EPROTO)
BAD_CASE(test_hello_unknown_version, BAD_HELLO_VERSION, EPROTO)

static void ast_nop(void *arg)
{
	(void)arg;
}

/* Random frames after a request: any outcome but a crash or a hang. Half the requests are asynchronous,
 * so that the AST thread (or dlm_dispatch) meets the garbage. */
static void test_fuzz(void)
{
	for (unsigned seed = 1; seed <= 400; seed++) {
		dlm_lshandle_t ls;
		struct dlm_lksb lksb;
		start_server(BAD_FUZZ, seed);
		ls = dlm_create_lockspace("robust", 0600);
		CHECK(ls != NULL);
		if (ls) {
#ifndef TEST_LT
			if (seed % 2)
				dlm_ls_pthread_init(ls);
#endif
			memset(&lksb, 0, sizeof(lksb));
			if (seed % 4 < 2) {
				dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, 0, "r", 1, 0, NULL, NULL, NULL);
			} else {
				int fd = dlm_ls_get_fd(ls);
				dlm_ls_lock(ls, LKM_EXMODE, &lksb, 0, "r", 1, 0, ast_nop, NULL, ast_nop, NULL);
				/* Dispatch until the connection is gone (the fake server closes after the noise). */
				for (int i = 0; i < 100; i++) {
					struct pollfd p = {fd, POLLIN, 0};
					if (poll(&p, 1, 10000) <= 0 || dlm_dispatch(fd) != 0)
						break;
				}
			}
			dlm_close_lockspace(ls);
		}
		pthread_join(server, NULL);
		if (h_case_failed)
			break;
	}
}

int main(void)
{
	struct sockaddr_un addr;
	snprintf(h_prefix, sizeof(h_prefix), "robust: ");
	signal(SIGPIPE, SIG_IGN);
	snprintf(sock_path, sizeof(sock_path), "/tmp/cdlm-robust-%d.sock", (int)getpid());
	unlink(sock_path);
	listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, sock_path, strlen(sock_path));
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(listen_fd, 4)) {
		perror("fake dlmd");
		return 1;
	}
	setenv("DLM_SOCKET", sock_path, 1);
	RUN(test_closed);
	RUN(test_mode6);
	RUN(test_length_over_16m);
	RUN(test_length_zero);
	RUN(test_unknown_tag);
	RUN(test_wrong_reply);
	RUN(test_goodbye);
	RUN(test_error_tag0);
	RUN(test_not_utf8);
	RUN(test_truncated);
	RUN(test_unknown_lock);
	RUN(test_duplicate_lock_id);
	RUN(test_bad_hello);
	RUN(test_hello_unknown_version);
	RUN(test_fuzz);
	close(listen_fd);
	unlink(sock_path);
	return h_done();
}
