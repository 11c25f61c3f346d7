// A Go HTTP client for the request-probe tests, with its own server on loopback. The server
// is the ground truth: for every request it prints which client function sent it (the URL
// path) and the client's port, before it answers:
//
//	server <port>
//	warm <port>
//
// warmUp's tidy request comes first (so that the process holds a connection, idle in the
// pool, and a daemon probing every Go process holding one finds it). Then, per line read on
// standard input, the program makes 4 requests from leakRequests (bodies neither read nor
// closed: each keeps its connection checked out) and 4 from tidyRequests (bodies drained and
// closed: they share one pooled connection), printing `leak <port>` / `tidy <port>` and then
// `done`; a line `leak N` (`tidy N`) makes N leaking (tidy) requests alone. It exits when its standard input is
// closed.
//
// The first argument picks how the client makes its requests (default `get`):
//
//	get      http.Get, the default Transport
//	custom   a custom http.Client with its own Transport
//	context  http.NewRequestWithContext and client.Do
//	https    a TLS server (HTTP/1.1) and the client httptest configures for it
//	wrapped  a Transport whose dialer wraps each *net.TCPConn in a type of its own
//	bench N  no server output: N tidy requests, then `rps <requests per second>`, per line
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"time"
)

var (
	client = http.DefaultClient
	mode   = "get"
	quiet  bool
)

func main() {
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !quiet {
			_, port, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Println(strings.TrimPrefix(r.URL.Path, "/"), port)
		}
		io.WriteString(w, "hello")
	})
	var server *httptest.Server
	switch mode {
	case "get", "context", "bench":
	case "custom":
		client = &http.Client{
			Transport: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: time.Minute},
			Timeout:   time.Minute,
		}
	case "wrapped":
		dialer := &net.Dialer{}
		client = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := dialer.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				stats := &connStats{}
				// The descriptor, kept as instrumentation might: read with *net.TCPConn's
				// offsets, this wrapper leads to a real socket's number.
				if raw, err := conn.(*net.TCPConn).SyscallConn(); err == nil {
					raw.Control(func(fd uintptr) { stats.fd = int64(fd) })
				}
				return &countingConn{stats: stats, Conn: conn}, nil
			},
		}}
	case "https":
		// httptest leaves HTTP/2 off unless asked: the requests are HTTP/1.1 over TLS.
		server = httptest.NewTLSServer(handler)
		client = server.Client()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
	if server == nil {
		server = httptest.NewServer(handler)
	}
	defer server.Close()
	fmt.Println("server", server.Listener.Addr().(*net.TCPAddr).Port)
	input := bufio.NewReader(os.Stdin)
	if mode == "bench" {
		quiet = true
		n, _ := strconv.Atoi(os.Args[2])
		bench(server.URL, n, input)
		return
	}
	warmUp(server.URL + "/warm")
	var leaked []*http.Response
	for {
		line, err := input.ReadString('\n')
		if err != nil {
			break
		}
		leaks, tidy := 4, 4
		if words := strings.Fields(line); len(words) == 2 {
			n, _ := strconv.Atoi(words[1])
			if words[0] == "leak" {
				leaks, tidy = n, 0
			} else {
				leaks, tidy = 0, n
			}
		}
		for i := 0; i < leaks; i++ {
			leaked = append(leaked, leakRequests(server.URL+"/leak"))
		}
		for i := 0; i < tidy; i++ {
			tidyRequests(server.URL + "/tidy")
		}
		fmt.Println("done")
	}
	fmt.Fprintln(io.Discard, len(leaked))
}

// Each request function makes its GET the way the mode says itself: a helper between them and
// net/http would be the innermost function of the program on the request's stack, and so the
// one tracer names.

//go:noinline
func leakRequests(url string) *http.Response {
	var resp *http.Response
	var err error
	switch mode {
	case "get":
		resp, err = http.Get(url)
	case "context":
		var req *http.Request
		if req, err = http.NewRequestWithContext(context.Background(), "GET", url, nil); err == nil {
			resp, err = client.Do(req)
		}
	default:
		resp, err = client.Get(url)
	}
	check(err)
	return resp
}

//go:noinline
func tidyRequests(url string) {
	var resp *http.Response
	var err error
	switch mode {
	case "get":
		resp, err = http.Get(url)
	case "context":
		var req *http.Request
		if req, err = http.NewRequestWithContext(context.Background(), "GET", url, nil); err == nil {
			resp, err = client.Do(req)
		}
	default:
		resp, err = client.Get(url)
	}
	check(err)
	drain(resp)
}

//go:noinline
func warmUp(url string) {
	resp, err := client.Get(url)
	check(err)
	drain(resp)
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}

// countingConn is a connection type of the program's own, as instrumenting dialers return.
type countingConn struct {
	stats *connStats
	net.Conn
}

type connStats struct {
	reads, bytes, fd int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.stats.reads++
	c.stats.bytes += int64(n)
	return n, err
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// bench makes n tidy requests on one kept-alive connection per input line and prints the rate.
func bench(url string, n int, input *bufio.Reader) {
	for {
		if _, err := input.ReadString('\n'); err != nil {
			return
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			tidyRequests(url)
		}
		fmt.Printf("rps %.0f\n", float64(n)/time.Since(start).Seconds())
	}
}
