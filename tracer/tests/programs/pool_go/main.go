// HTTP pool workloads for the pool-health tests: a server, and clients whose connection pools
// sit idle or whose responses are never read. One role per process, from the arguments:
//
//	server                 serve on 127.0.0.1:0 (prints "port N"): /hold answers after 300 ms,
//	                       /large sends 4 MiB
//	pool ADDR N TIMEOUT_MS warm a pool of N connections (N concurrent /hold requests, bodies
//	                       drained and closed) with the given idle timeout (0: none), then idle
//	unread ADDR N          GET /large on N connections, never read nor close the bodies
//	drain ADDR N           GET /large on N connections, read every body to the end and close
//	                       it, again and again
//	slow ADDR N MS BYTES   GET /large on N connections, then every MS milliseconds read BYTES
//	                       more of each body (a slow, steady consumer; 4 MiB outlasts the tests)
//
// Clients print "ok" once their requests are done (drain: after the first round).
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

func client(n int, idleTimeout time.Duration) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns:        n,
		MaxIdleConnsPerHost: n,
		MaxConnsPerHost:     n,
		IdleConnTimeout:     idleTimeout,
	}}
}

// fetch runs n concurrent GETs of url and hands each response to keep.
func fetch(c *http.Client, url string, n int, keep func(*http.Response)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(url)
			if err != nil {
				panic(err)
			}
			keep(resp)
		}()
	}
	wg.Wait()
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

var kept []*http.Response
var keptMu sync.Mutex

func main() {
	switch os.Args[1] {
	case "server":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		large := make([]byte, 4<<20)
		http.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond)
			w.Write([]byte("ok"))
		})
		http.HandleFunc("/large", func(w http.ResponseWriter, r *http.Request) {
			w.Write(large)
		})
		fmt.Printf("port %d\n", l.Addr().(*net.TCPAddr).Port)
		panic(http.Serve(l, nil))
	case "pool", "unread", "drain", "slow":
		addr := os.Args[2]
		n, _ := strconv.Atoi(os.Args[3])
		switch os.Args[1] {
		case "pool":
			ms, _ := strconv.Atoi(os.Args[4])
			fetch(client(n, time.Duration(ms)*time.Millisecond), "http://"+addr+"/hold", n, drain)
			fmt.Println("ok")
		case "unread":
			fetch(client(n, 0), "http://"+addr+"/large", n, func(r *http.Response) {
				keptMu.Lock()
				kept = append(kept, r)
				keptMu.Unlock()
			})
			fmt.Println("ok")
		case "slow":
			ms, _ := strconv.Atoi(os.Args[4])
			size, _ := strconv.Atoi(os.Args[5])
			fetch(client(n, 0), "http://"+addr+"/large", n, func(r *http.Response) {
				keptMu.Lock()
				kept = append(kept, r)
				keptMu.Unlock()
			})
			fmt.Println("ok")
			buf := make([]byte, size)
			for {
				time.Sleep(time.Duration(ms) * time.Millisecond)
				for _, r := range kept {
					if _, err := io.ReadFull(r.Body, buf); err != nil {
						panic(err)
					}
				}
			}
		case "drain":
			c := client(n, 0)
			fetch(c, "http://"+addr+"/large", n, drain)
			fmt.Println("ok")
			for {
				time.Sleep(200 * time.Millisecond)
				fetch(c, "http://"+addr+"/large", n, drain)
			}
		}
		select {}
	}
}
