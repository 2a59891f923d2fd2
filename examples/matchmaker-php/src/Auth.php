<?php

// Handshake parameters and the token check, as examples/matchmaker/src/auth.rs.
//
// A game backend that authenticated a player issues
// `token = hex(HMAC-SHA256(MATCH_SECRET, decimal uid))` and hands the client
// `ws://HOST/match?uid=U&gender=m|f&game=G&name=N&rating=R&token=T`.

declare(strict_types=1);

namespace Matchmaker;

use Hotsock\HandshakeRequest;

final class Params
{
    /** Longest game id and display name, in bytes (the table's columns). */
    private const GAME_MAX = 32;
    private const NAME_MAX = 32;

    private function __construct(
        public readonly int $uid,
        public readonly string $gender,
        public readonly string $game,
        public readonly string $name,
        public readonly int $rating,
    ) {
    }

    /** Reads and checks the query; the error (a string) is the 400 body. */
    public static function parse(HandshakeRequest $request): self|string
    {
        $uid = $request->query('uid');
        if ($uid === null) {
            return 'missing uid';
        }
        if (!self::positive($uid)) {
            return 'uid must be a positive integer';
        }
        $gender = $request->query('gender');
        if ($gender === null) {
            return 'missing gender';
        }
        if ($gender !== 'm' && $gender !== 'f') {
            return 'gender must be m or f';
        }
        $game = $request->query('game');
        if ($game === null) {
            return 'missing game';
        }
        if ($game === '' || strlen($game) > self::GAME_MAX || preg_match('/^[A-Za-z0-9-]+$/', $game) !== 1) {
            return 'game must be 1 to ' . self::GAME_MAX . ' letters, digits or dashes';
        }
        $name = $request->query('name');
        $name = $name === null ? "player{$uid}" : self::decode($name);
        if ($name === '' || strlen($name) > self::NAME_MAX) {
            return 'name must be 1 to ' . self::NAME_MAX . ' bytes';
        }
        $rating = $request->query('rating');
        if ($rating !== null && preg_match('/^[+-]?[0-9]{1,18}$/', $rating) !== 1) {
            return 'rating must be an integer';
        }
        return new self((int) $uid, $gender, $game, $name, $rating === null ? 1000 : (int) $rating);
    }

    /** Decimal digits of a positive integer PHP can hold. */
    private static function positive(string $text): bool
    {
        $digits = ltrim($text, '+');
        return strlen($text) - strlen($digits) <= 1 && $digits !== '' && ctype_digit($digits)
            && (strlen(ltrim($digits, '0')) < 19 || (strlen(ltrim($digits, '0')) === 19 && ltrim($digits, '0') <= (string) PHP_INT_MAX))
            && (int) $digits > 0;
    }

    /** `%20` and `+` in a display name; bytes that are not UTF-8 become U+FFFD (the table holds text). */
    private static function decode(string $text): string
    {
        $bytes = urldecode($text);
        return preg_match('//u', $bytes) === 1 ? $bytes : (string) preg_replace('/[\x80-\xff]/', "\u{FFFD}", $bytes);
    }
}

final class Auth
{
    /** The token a backend issues for `$uid`. */
    public static function token(string $secret, int $uid): string
    {
        return hash_hmac('sha256', (string) $uid, $secret);
    }

    /** Checks a token in constant time. */
    public static function valid(string $secret, int $uid, ?string $token): bool
    {
        return $token !== null && hash_equals(self::token($secret, $uid), strtolower($token));
    }
}
