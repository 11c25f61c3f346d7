// A Go client whose connection leak comes from one named function: leakConnections dials and
// never closes, tidyConnections dials and closes. It serves its own listener, so every
// connection is between two of its own sockets. Commands on stdin, one per line:
//
//	leak N   dial N connections and keep them
//	tidy N   dial and close N connections
//	stale N  dial N connections to a listener that hangs up at once, and keep them: the
//	         peer's close leaves each in CLOSE_WAIT (leakCloseWait)
//	exit
//
// Each command answers "ok" once done; the first line printed is "ready".
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

var kept []net.Conn

//go:noinline
func leakConnections(addr string, n int) {
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			panic(err)
		}
		kept = append(kept, c)
	}
}

//go:noinline
func tidyConnections(addr string, n int) {
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			panic(err)
		}
		c.Close()
	}
}

var stale []net.Conn

//go:noinline
func leakCloseWait(addr string, n int) {
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			panic(err)
		}
		stale = append(stale, c)
	}
}

// hangUp closes every connection it accepts.
func hangUp(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

//go:noinline
func serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			buf := make([]byte, 1)
			c.Read(buf) // until the peer closes
			c.Close()
		}(c)
	}
}

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go serve(l)
	addr := l.Addr().String()
	h, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go hangUp(h)
	hangUpAddr := h.Addr().String()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			continue
		}
		n := 0
		if len(fields) > 1 {
			n, _ = strconv.Atoi(fields[1])
		}
		switch fields[0] {
		case "leak":
			leakConnections(addr, n)
		case "tidy":
			tidyConnections(addr, n)
		case "stale":
			leakCloseWait(hangUpAddr, n)
		case "exit":
			return
		}
		fmt.Println("ok")
	}
}
