// Test program of tracer/src/stacks/gopclntab/tests.rs: prints, for pcs of its own functions
// and of the Go runtime and standard library, what Go itself says about them, so the test can
// check that the pclntab reader says the same about the same pcs in this binary.
//
// Output, one item a line, tab-separated:
//
//	base   <load address of the executable's first mapping>   (for PIE builds)
//	func   <pc> <runtime.FuncForPC(pc).Name()> <file> <line>   (FileLine(pc))
//	frame  <pc> <depth> <function> <file> <line>               (runtime.CallersFrames([]uintptr{pc}))
//
// pcs in hex. It opens no connection: openDB dials an empty address, which fails at once.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"reflect"
	"runtime"
	"strings"
)

type server struct{ name string }

// pcs collects the pcs whose symbols the program prints.
var pcs []uintptr

//go:noinline
func openDB(addr string) error {
	here := make([]uintptr, 64)
	n := runtime.Callers(0, here)
	pcs = append(pcs, here[:n]...)
	conn, err := net.Dial("tcp", addr)
	if err == nil {
		conn.Close()
	}
	return err
}

//go:noinline
func (s *server) handle() error {
	return openDB(s.name)
}

// Inlined into caller: its pcs have an inline tree entry.
func inlinedHelper(xs []uintptr) []uintptr {
	here := make([]uintptr, 64)
	n := runtime.Callers(0, here)
	return append(xs, here[:n]...)
}

//go:noinline
func caller() {
	pcs = inlinedHelper(pcs)
}

//go:noinline
func Map[T any](xs []T, f func(T) T) []T {
	out := make([]T, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	return out
}

func main() {
	s := &server{name: ""}
	_ = s.handle()
	caller()
	double := func(x int) int {
		here := make([]uintptr, 64)
		n := runtime.Callers(0, here)
		pcs = append(pcs, here[:n]...)
		return 2 * x
	}
	_ = Map([]int{1}, double)

	entries := []interface{}{openDB, (*server).handle, inlinedHelper, caller, Map[int], main,
		fmt.Println, net.Dial, runtime.Callers}
	for _, f := range entries {
		pcs = append(pcs, reflect.ValueOf(f).Pointer())
	}

	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	fmt.Fprintf(out, "base\t%x\n", loadBase())
	for _, pc := range pcs {
		f := runtime.FuncForPC(pc)
		if f == nil {
			continue
		}
		file, line := f.FileLine(pc)
		fmt.Fprintf(out, "func\t%x\t%s\t%s\t%d\n", pc, f.Name(), file, line)
		frames := runtime.CallersFrames([]uintptr{pc})
		for depth := 0; ; depth++ {
			fr, more := frames.Next()
			fmt.Fprintf(out, "frame\t%x\t%d\t%s\t%s\t%d\n", pc, depth, fr.Function, fr.File, fr.Line)
			if !more {
				break
			}
		}
	}
}

// loadBase is the start of the first mapping of this executable (its load address: the ELF's
// lowest address plus the PIE's load bias).
func loadBase() uint64 {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		panic(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		panic(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		fields := strings.Fields(l)
		if len(fields) >= 6 && fields[5] == exe {
			var start uint64
			fmt.Sscanf(fields[0], "%x-", &start)
			return start
		}
	}
	panic("executable not in /proc/self/maps")
}
