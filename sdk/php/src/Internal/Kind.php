<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/**
 * Frame kinds of protocol version 1 (docs/protocol.md, "Kinds"). Server to
 * worker kinds are below 0x40, worker to server kinds at or above it.
 */
final class Kind
{
    public const HELLO = 0x01;
    public const HANDSHAKE = 0x02;
    public const OPEN = 0x03;
    public const MESSAGE = 0x04;
    public const CLOSE = 0x05;
    public const REPLY = 0x06;
    public const STOP = 0x07;
    public const SNAPSHOT = 0x08;
    public const TASK = 0x09;
    public const FINISH = 0x0a;
    public const PING = 0x0b;
    public const JOIN = 0x0c;
    public const LEAVE = 0x0d;

    public const READY = 0x41;
    public const ACK = 0x42;
    public const PUSH = 0x43;
    public const CLOSE_CONN = 0x44;
    public const BIND = 0x45;
    public const SEND_TO_UID = 0x46;
    public const BROADCAST = 0x47;
    public const CONN_INFO = 0x48;
    public const CONN_LIST = 0x49;
    public const HANDSHAKE_REPLY = 0x4a;
    public const PANICKED = 0x4b;
    public const HANDOFF = 0x4c;
    public const DISPATCH_TASK = 0x4d;
    public const TASK_DONE = 0x4e;
    public const PONG = 0x4f;
    public const SUBSCRIBE = 0x50;
    public const UNSUBSCRIBE = 0x51;
    public const PUBLISH = 0x52;
    public const MEMBERS = 0x53;
    public const CONN_CHANNELS = 0x54;
    public const PRESENCE = 0x70;
    public const CLOSE_UID = 0x71;
    public const TABLE_GET = 0x60;
    public const TABLE_SET = 0x61;
    public const TABLE_INSERT = 0x62;
    public const TABLE_INCR = 0x63;
    public const TABLE_INCR_FLOAT = 0x64;
    public const TABLE_COMPARE_AND_SET = 0x65;
    public const TABLE_DELETE = 0x66;
    public const TABLE_ITERATE = 0x67;

    /** The kinds that are events: acknowledged after their handler. */
    public const EVENTS = [
        self::HANDSHAKE => true,
        self::OPEN => true,
        self::MESSAGE => true,
        self::CLOSE => true,
        self::TASK => true,
        self::JOIN => true,
        self::LEAVE => true,
    ];

    /** Every kind a server may send. */
    public const TO_WORKER = self::EVENTS + [
        self::HELLO => true,
        self::REPLY => true,
        self::STOP => true,
        self::SNAPSHOT => true,
        self::FINISH => true,
        self::PING => true,
    ];

    /** Flag bits (docs/protocol.md, "Flags"). */
    public const BINARY = 1 << 0;
    public const REDELIVERED = 1 << 1;
    public const NOT_FOUND = 1 << 2;
    public const ORPHANED = 1 << 3;
    public const FAILED = 1 << 4;
    public const FROM = 1 << 5;
    public const EXCEPT = 1 << 6;

    /** Ready capability bits. */
    public const CAP_HANDSHAKE = 1 << 0;
    public const CAP_HANDOFF = 1 << 1;
    public const CAP_CHANNEL_EVENTS = 1 << 2;

    public const PROTOCOL_VERSION = 1;
}
