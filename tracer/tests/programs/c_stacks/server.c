/* A listener on 127.0.0.1 whose accept loop (accept_loop, on its own thread) keeps every
 * connection open; prints the port, exits when stdin closes (tests/c_stacks.rs). Two threads:
 * glibc's accept takes its cancellable path. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((noinline)) static void *accept_loop(void *arg)
{
	int listener = *(int *)arg;
	for (;;) {
		if (accept(listener, NULL, NULL) < 0) {
			perror("accept");
			exit(1);
		}
	}
	return NULL;
}

int main(void)
{
	static int listener;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	pthread_t thread;
	char buf[64];

	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
	    listen(listener, 128) != 0 || getsockname(listener, (struct sockaddr *)&addr, &len) != 0) {
		perror("listen");
		return 1;
	}
	if (pthread_create(&thread, NULL, accept_loop, &listener) != 0)
		return 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("%d\n", ntohs(addr.sin_port));
	while (fgets(buf, sizeof(buf), stdin))
		;
	return 0;
}
