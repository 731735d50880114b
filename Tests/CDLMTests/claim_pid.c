/*
 * A client that claims another process's pid in HELLO (Tests/IntegrationTests/SocketPermissionTests.swift): on the
 * dlmd socket SOCKET it says HELLO with pid PID, opens (creates) lockspace "ids", takes "who" in NL, prints "held"
 * and keeps its connection until standard input ends. Usage: claim_pid SOCKET PID.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../Sources/CDLM/wire.h"

static int fd;
static uint8_t in[1 << 16];
static size_t have;

static void send_msg(const struct dlmw_msg *m)
{
	uint8_t out[DLMW_MAX_CLIENT_BYTES];
	size_t n = dlmw_encode(m, out);
	if (write(fd, out, n) != (ssize_t)n) {
		perror("write");
		exit(1);
	}
}

/* The next frame from dlmd, decoded into `m`. */
static void receive(struct dlmw_msg *m)
{
	static size_t used;
	size_t frame_len;
	if (used) {
		memmove(in, in + used, have - used);
		have -= used;
		used = 0;
	}
	int found;
	while ((found = dlmw_split(in, have, DLMW_MAX_SERVER_FRAME, &frame_len)) == 0) {
		ssize_t n = read(fd, in + have, sizeof(in) - have);
		if (n <= 0) {
			fprintf(stderr, "dlmd closed the connection\n");
			exit(1);
		}
		have += (size_t)n;
	}
	if (found < 0) {
		fprintf(stderr, "a refused frame length\n");
		exit(1);
	}
	if (dlmw_decode(DLMW_FROM_SERVER, in, frame_len, m) != 0) {
		fprintf(stderr, "a malformed frame\n");
		exit(1);
	}
	used = frame_len;
}

int main(int argc, char **argv)
{
	struct sockaddr_un address = {.sun_family = AF_UNIX};
	struct dlmw_msg m;
	char line[16];

	if (argc != 3) {
		fprintf(stderr, "usage: claim_pid SOCKET PID\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	strncpy(address.sun_path, argv[1], sizeof(address.sun_path) - 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
		perror("connect");
		return 1;
	}
	memset(&m, 0, sizeof(m));
	m.type = DLMW_HELLO;
	m.u.hello.magic = DLMW_MAGIC;
	m.u.hello.min_version = m.u.hello.max_version = DLMW_VERSION;
	m.u.hello.pid = (uint32_t)strtoul(argv[2], NULL, 10);
	m.u.hello.name = (const uint8_t *)"claim_pid";
	m.u.hello.name_len = 9;
	send_msg(&m);
	receive(&m);
	if (m.type != DLMW_HELLO_REPLY) {
		fprintf(stderr, "HELLO refused\n");
		return 1;
	}
	memset(&m, 0, sizeof(m));
	m.type = DLMW_LOCKSPACE_OPEN;
	m.tag = 1;
	m.u.ls_open.flags = 1;
	m.u.ls_open.mode = 0666; /* run as nobody and as root: both lock in it */
	m.u.ls_open.name = (const uint8_t *)"ids";
	m.u.ls_open.name_len = 3;
	send_msg(&m);
	receive(&m);
	if (m.type != DLMW_LOCKSPACE) {
		fprintf(stderr, "lockspace refused\n");
		return 1;
	}
	uint32_t lockspace = m.u.lockspace.lockspace;
	memset(&m, 0, sizeof(m));
	m.type = DLMW_LOCK;
	m.tag = 2;
	m.u.lock.lockspace = lockspace;
	m.u.lock.mode = 0;
	m.u.lock.name = (const uint8_t *)"who";
	m.u.lock.name_len = 3;
	send_msg(&m);
	receive(&m);
	if (m.type != DLMW_COMPLETION || m.u.completion.status != 0) {
		fprintf(stderr, "lock refused\n");
		return 1;
	}
	printf("held\n");
	while (fgets(line, sizeof(line), stdin) != NULL) {
	}
	return 0;
}
