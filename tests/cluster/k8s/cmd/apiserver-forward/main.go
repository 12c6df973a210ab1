// apiserver-forward relays TCP connections from the pod network's gateway address
// to the kube-apiserver on loopback. The apiserver listens on 127.0.0.1 only, and
// Endpoints/EndpointSlices may not hold loopback addresses, so the "kubernetes"
// Service points at the bridge gateway (10.244.0.1:16443) and this relays to
// 127.0.0.1:16443. TLS passes through untouched.
//
// Usage: apiserver-forward LISTEN_ADDR TARGET_ADDR
package main

import (
	"io"
	"log"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatalf("usage: %s LISTEN_ADDR TARGET_ADDR", os.Args[0])
	}
	listen, target := os.Args[1], os.Args[2]
	var ln net.Listener
	var err error
	// The address may appear a moment after start (the bridge is set up by up.sh).
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", listen); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		log.Fatalf("listen %s: %v", listen, err)
	}
	log.Printf("relaying %s -> %s", listen, target)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("accept: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go relay(c, target)
	}
}

func relay(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		log.Printf("dial %s for %s: %v", target, c.RemoteAddr(), err)
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(u, c)
	go pipe(c, u)
	<-done
	<-done
}
