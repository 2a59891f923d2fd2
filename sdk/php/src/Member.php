<?php

declare(strict_types=1);

namespace Hotsock;

/** A channel member: its connection and bound uid. */
final class Member
{
    public function __construct(public readonly int $conn, public readonly ?int $uid)
    {
    }

    /** @return list<Member> */
    public static function decodeList(string $body): array
    {
        if (strlen($body) % 17 !== 0) {
            throw new ProtocolError('member list is not 17 bytes per member');
        }
        $members = [];
        for ($at = 0; $at < strlen($body); $at += 17) {
            /** @var array{conn:int,has:int,uid:int} $m */
            $m = unpack('Pconn/Chas/Puid', $body, $at);
            $members[] = new self($m['conn'], $m['has'] !== 0 ? $m['uid'] : null);
        }
        return $members;
    }
}
