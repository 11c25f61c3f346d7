/* Opens connections from two named functions, driven over stdin (tests/c_stacks.rs):
 * `leak N` connects N times from leak_connections and never closes, `tidy N` connects and
 * closes N times from tidy_close. Single-threaded: glibc's connect takes its direct path.
 * Usage: leaker PORT (a listener on 127.0.0.1). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in peer;

static int open_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		exit(1);
	}
	return fd;
}

__attribute__((noinline)) static void leak_connections(int n)
{
	for (int i = 0; i < n; i++) {
		int fd = open_socket();
		if (connect(fd, (struct sockaddr *)&peer, sizeof(peer)) != 0) {
			perror("connect");
			exit(1);
		}
	}
}

__attribute__((noinline)) static void tidy_close(int n)
{
	for (int i = 0; i < n; i++) {
		int fd = open_socket();
		if (connect(fd, (struct sockaddr *)&peer, sizeof(peer)) != 0) {
			perror("connect");
			exit(1);
		}
		close(fd);
	}
}

int main(int argc, char **argv)
{
	char line[64];
	int n;

	if (argc != 2)
		return 2;
	peer.sin_family = AF_INET;
	peer.sin_port = htons((unsigned short)atoi(argv[1]));
	peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (fgets(line, sizeof(line), stdin)) {
		if (sscanf(line, "leak %d", &n) == 1)
			leak_connections(n);
		else if (sscanf(line, "tidy %d", &n) == 1)
			tidy_close(n);
		else
			return 2;
		printf("ok\n");
	}
	return 0;
}
