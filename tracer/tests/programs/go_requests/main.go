// A Go HTTP client for the request-probe tests. It serves HTTP on loopback, makes one tidy
// request from warmUp (so that the process holds connections, and a daemon that probes every
// Go process holding one finds it; the connection stays idle in the pool) and prints
//
//	server <port>
//	warm <port>
//
// then waits for a line on standard input, makes 4 requests from leakRequests (bodies neither
// read nor closed: each keeps its connection checked out) and then 4 from tidyRequests (bodies
// drained and closed: they share one pooled connection), all through the default Transport,
// printing for each the local port of the connection it went out on:
//
//	leak <port>
//	tidy <port>
//	done
//
// and waits until its standard input is closed.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
)

func main() {
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer server.Close()
	fmt.Println("server", server.Listener.Addr().(*net.TCPAddr).Port)
	warmUp(server.URL)
	input := bufio.NewReader(os.Stdin)
	input.ReadString('\n')
	var leaked []*http.Response
	for i := 0; i < 4; i++ {
		leaked = append(leaked, leakRequests(server.URL))
	}
	for i := 0; i < 4; i++ {
		tidyRequests(server.URL)
	}
	fmt.Println("done")
	io.Copy(io.Discard, input)
	fmt.Fprintln(io.Discard, len(leaked))
}

// request builds a GET of url that prints "<kind> <local port>" once it has its connection.
func request(kind, url string) *http.Request {
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		fmt.Println(kind, info.Conn.LocalAddr().(*net.TCPAddr).Port)
	}}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		panic(err)
	}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
}

//go:noinline
func leakRequests(url string) *http.Response {
	resp, err := http.DefaultClient.Do(request("leak", url))
	if err != nil {
		panic(err)
	}
	return resp
}

//go:noinline
func warmUp(url string) {
	resp, err := http.DefaultClient.Do(request("warm", url))
	if err != nil {
		panic(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

//go:noinline
func tidyRequests(url string) {
	resp, err := http.DefaultClient.Do(request("tidy", url))
	if err != nil {
		panic(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
